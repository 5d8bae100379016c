"""`python -m tests.reliability [--scale full] [--seed N] [names...]`: the reliability campaign.

Runs the scenarios in order (all of them, or those named: `kill_sqlite` or `soak_kill_sqlite`),
prints each one's PASS/FAIL line as it ends, then a summary table; exits 1 on any FAIL. A
scenario that cannot run here (no redis-server) is a SKIP, shown as such, not a pass.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from tests.reliability.harness import DEFAULT_SEED, RESULTS, SCALES, Result, execute

SCENARIOS = [
    "soak_kill_sqlite",
    "soak_kill_redis",
    "soak_webhook_outage",
    "soak_backpressure",
    "soak_sse_clients",
    "soak_sigterm",
    "soak_fuzz",
]


def _chosen(names: list[str]) -> list[str]:
    chosen = []
    for name in names:
        full = name if name.startswith("soak_") else f"soak_{name}"
        if full not in SCENARIOS:
            raise SystemExit(f"No scenario {name!r}. Scenarios: {', '.join(SCENARIOS)}")
        chosen.append(full)
    return chosen or SCENARIOS


def table(results: list[Result]) -> str:
    rows = [f"{'scenario':<22} {'scale':<5} {'result':<6} {'time':>6}  figures"]
    for result in results:
        figures = result.skipped or result.summary()
        rows.append(
            f"{result.name:<22} {result.scale:<5} {result.status:<6} {result.seconds:>5.0f}s  {figures}"
        )
    return "\n".join(rows)


def markdown(names: list[str], scale: str) -> str:
    """The docs/reliability.md table, from the JSON results of the last runs at `scale`."""
    rows = [
        "| scenario | scale | result | figures | time | date | commit |",
        "|---|---|---|---|---:|---|---|",
    ]
    for name in names:
        path = RESULTS / f"{name}-{scale}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        result = Result(**{key: value for key, value in data.items() if key != "status"})
        figures = (result.skipped or result.summary()).replace("|", "/")
        rows.append(
            f"| `{name}` | {scale} | **{result.status}** | {figures} | {result.seconds:.0f} s "
            f"| {result.date} | `{result.commit}` |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability", description=__doc__)
    parser.add_argument("--scale", choices=SCALES, default="fast", help="fast: 10x smaller (default)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("names", nargs="*", help=f"scenarios to run (default: all): {', '.join(SCENARIOS)}")
    parser.add_argument("--markdown", action="store_true", help="print the last results as a table")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(_chosen(args.names), args.scale))
        return 0
    results = []
    for name in _chosen(args.names):
        module = importlib.import_module(f"tests.reliability.{name}")
        results.append(execute(module.run, args.scale, args.seed))
    print("\n" + table(results))
    failed = [result.name for result in results if result.status == "FAIL"]
    skipped = [result.name for result in results if result.status == "SKIP"]
    if skipped:
        print(f"SKIPPED (not passed): {', '.join(skipped)}", file=sys.stderr)
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
