"""Plots of bench/peers_run.py's results (run in .venv-peers, where matplotlib is installed).

.venv-peers/bin/python bench/peers_plot.py bench/results/peers.json docs/img
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {
    "cortex": "#1f77b4",
    "proxied": "#1f77b4",
    "cortex_llm": "#1f77b4",
    "litserve": "#9467bd",
    "bentoml": "#ff7f0e",
    "raw": "#7f7f7f",
}
COMPARED = (("cortex", "cortex"), ("litserve", "LitServe"), ("bentoml", "BentoML"))
SHORT = {
    "json": "sync JSON",
    "sse": "SSE 1,000 chunks",
    "async": "async submit\n+ completion",
    "proxy": "custom\nruntime proxy",
}


def _is_number(value: Any) -> bool:
    """A plottable number: NaN is written to JSON as null."""
    return isinstance(value, int | float) and not math.isnan(value)


def _cortex_key(row: dict[str, Any]) -> str:
    return {"proxied": "cortex", "cortex_llm": "cortex"}.get(row["variant"], row["variant"])


def plot_ratios(summary: dict[str, Any], path: Path) -> None:
    scenarios = summary["scenarios"]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.26
    for index, (key, label) in enumerate(COMPARED):
        for x, scenario in enumerate(scenarios):
            row = next((r for r in scenario["rows"] if _cortex_key(r) == key), None)
            offset = x + (index - 1) * width
            if row is None or "na" in row or not _is_number(row.get("ratio_median")):
                ax.text(offset, 1.15, "n/a", ha="center", va="bottom", fontsize=7, rotation=90, color="#555")
                continue
            value = row["ratio_median"]
            ax.bar(
                offset, value, width, color=COLORS[key], label=label if x == 0 or key == "cortex" else None
            )
            ax.text(offset, value * 1.05, f"{value:.2f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
    ax.set_yscale("log")
    ax.set_ylabel("throughput / ceiling (median of per-round ratios, log)")
    ax.set_xticks(range(len(scenarios)))
    ax.set_xticklabels(
        [SHORT.get(s["key"], f"LLM chat\n{s['key'][3:]} stream(s)") for s in scenarios], fontsize=8
    )
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), loc="upper left", fontsize=8)
    ax.set_title("Throughput / each scenario's ceiling (dashed: raw Starlette, direct app, vLLM)")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(summary: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, figure in zip(axes, ("p50_ms", "p99_ms"), strict=True):
        for row in summary["sweep"]:
            points = [
                (int(level), cell[figure])
                for level, cell in row["levels"].items()
                if not math.isnan(cell[figure])
            ]
            if points:
                xs, ys = zip(*sorted(points), strict=True)
                ax.plot(xs, ys, marker="o", label=row["label"], color=COLORS.get(row["variant"]))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([1, 16, 64, 256])
        ax.set_xticklabels(["1", "16", "64", "256"])
        ax.set_xlabel("concurrent connections (wrk -c)")
        ax.set_title(f"sync JSON call, latency {figure.split('_')[0]}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms (log)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_startup(summary: dict[str, Any], path: Path) -> None:
    rows = summary["startup"]
    names = [row["label"].replace(" (ceiling)", "") for row in rows]
    colors = [COLORS.get(row["variant"], "#333") for row in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    cold = [row["cold_start_s_median"] or 0.0 for row in rows]
    axes[0].bar(names, cold, color=colors)
    axes[0].set_ylabel("seconds")
    axes[0].set_title("cold start: spawn to first 200 (bytecode compiled)", fontsize=9)
    for x, value in enumerate(cold):
        axes[0].text(x, value, f"{value:.2f}", ha="center", va="bottom", fontsize=8)
    xs = range(len(rows))
    rss = [row["rss_mb_median"] or 0.0 for row in rows]
    pss = [row["pss_mb_median"] or 0.0 for row in rows]
    axes[1].bar([x - 0.2 for x in xs], rss, 0.4, color=colors, alpha=0.5, label="RSS, summed")
    axes[1].bar([x + 0.2 for x in xs], pss, 0.4, color=colors, label="PSS, summed")
    for x, value in enumerate(pss):
        axes[1].text(x + 0.2, value, f"{value:.0f}", ha="center", va="bottom", fontsize=8)
    axes[1].set_xticks(list(xs))
    axes[1].set_xticklabels(names)
    axes[1].set_ylabel("MB")
    axes[1].set_title("memory of the process tree after 1,000 requests", fontsize=9)
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    results, img_dir = Path(sys.argv[1]), Path(sys.argv[2])
    summary = json.loads(results.read_text())["summary"]
    img_dir.mkdir(parents=True, exist_ok=True)
    plot_ratios(summary, img_dir / "peers-ratios.png")
    plot_latency(summary, img_dir / "peers-latency.png")
    plot_startup(summary, img_dir / "peers-startup.png")


if __name__ == "__main__":
    main()
