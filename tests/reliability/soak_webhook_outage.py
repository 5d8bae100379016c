"""The webhook receiver goes down for 60 s (fast: 6 s) while runs complete, then comes back on
the same port: every run's webhook arrives after the recovery, every signature verifies
(standardwebhooks), and each run keeps one webhook-id across all its attempts (a seeded tenth of
the runs have their first delivery after recovery answered 500, so they are sent twice)."""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from tests.reliability import harness
from tests.reliability.harness import Server, WebhookReceiver, make_app, wait_until
from tests.reliability.runs import Submitter, poll_all

NAME = "soak_webhook_outage"
RUNS = 300
OUTAGE_SECONDS = 60
# 1+2+4+8x11 = 95 s of retries: more than the outage, so no delivery gives up.
RETRY_SCHEDULE = "1,2,4," + ",".join(["8"] * 11)
SLOWEST_RETRY = 8.0
ENV = {"CORTEX_WEBHOOK_ALLOW_CIDRS": "127.0.0.0/8", "CORTEX_WEBHOOK_RETRY_SCHEDULE": RETRY_SCHEDULE}


def run(scale: str, seed: int) -> harness.Result:
    result = harness.Result(NAME, scale, seed)
    rng = random.Random(seed)
    runs = harness.scaled(RUNS, scale)
    outage = OUTAGE_SECONDS if scale == "full" else OUTAGE_SECONDS / 10
    receiver = WebhookReceiver()
    receiver.start()
    with tempfile.TemporaryDirectory(prefix="soak-webhook-") as scratch:
        server = Server(make_app(Path(scratch) / "app"), f"sqlite:///{scratch}/runs.db", ENV)
        try:
            server.wait_ready()
            base = server.base
            params = {"webhookEndpoint": receiver.url}
            bodies = [{"ms": round(rng.uniform(5, 50), 1)} for _ in range(runs)]
            before, during = bodies[: runs // 3], bodies[runs // 3 :]
            # A third while the receiver is up; a tenth of those fail their first delivery.
            first = Submitter(lambda: [base], "work", before, 1.0, seed, params).start().join(60)
            receiver.fail_once |= set(rng.sample(sorted(first.run_ids.values()), max(1, len(before) // 10)))
            wait_until(lambda: len(receiver.deliveries) >= len(before), 60, "the first third's webhooks")
            receiver.stop()
            down_at = time.monotonic()
            received_before_outage = len(receiver.deliveries)
            # The rest while it is down, over the first half of the outage.
            second = Submitter(lambda: [base], "work", during, outage / 2, seed + 1, params).start()
            second_done = second.join(outage + 60)
            time.sleep(max(0.0, outage - (time.monotonic() - down_at)))
            received_in_outage = len(receiver.deliveries) - received_before_outage
            accepted = [*first.run_ids.values(), *second_done.run_ids.values()]
            receiver.fail_once |= set(
                rng.sample(sorted(second_done.run_ids.values()), max(1, len(during) // 10))
            )
            receiver.start()
            back_at = time.time()
            expected = set(accepted)

            def all_delivered() -> bool:
                return expected <= {d.run_id for d in receiver.deliveries if d.answered == 200}

            wait_until(all_delivered, SLOWEST_RETRY * 3 + 30, "every run's webhook after the recovery", 0.2)
            recovered_in = max(d.at for d in receiver.deliveries) - back_at
            polled = poll_all(server.base, accepted)
            exit_code = server.terminate(30)
        except TimeoutError as exc:
            result.failures.append(str(exc))
            accepted, polled, exit_code, recovered_in, received_in_outage = [], {}, None, -1.0, -1
        finally:
            left = server.close()
            receiver.stop()
    _judge(result, receiver, accepted, polled, recovered_in, received_in_outage)
    result.figures["outage_s"] = outage
    result.check(exit_code == -15, f"exit code after SIGTERM: {exit_code}")
    result.check(not left, f"processes left running: {left}")
    return result


def _judge(
    result: harness.Result,
    receiver: WebhookReceiver,
    accepted: list[str],
    polled: dict[str, dict[str, Any]],
    recovered_in: float,
    received_in_outage: int,
) -> None:
    ids: dict[str, set[str]] = defaultdict(set)
    for delivery in receiver.deliveries:
        ids[delivery.run_id].add(delivery.webhook_id)
    delivered = {d.run_id for d in receiver.deliveries if d.answered == 200}
    unverified = [d for d in receiver.deliveries if not d.verified]
    unstable = {run_id: sorted(found) for run_id, found in ids.items() if len(found) != 1}
    shared = len(ids) - len({next(iter(found)) for found in ids.values() if found})
    not_marked = [r for r, view in polled.items() if (view.get("webhook") or {}).get("status") != "delivered"]
    result.figures.update(
        runs=len(accepted),
        delivered=len(delivered & set(accepted)),
        deliveries=len(receiver.deliveries),
        retried_runs=sum(count > 1 for count in _counts(receiver).values()),
        received_in_outage=received_in_outage,
        unverified=len(unverified),
        unstable_ids=len(unstable),
        last_after_recovery_s=round(recovered_in, 1),
    )
    result.check(bool(accepted), "no run was accepted")
    result.check(set(accepted) <= delivered, f"{len(set(accepted) - delivered)} run(s) never delivered")
    result.check(not unverified, f"{len(unverified)} deliveries failed signature verification")
    result.check(not unstable, f"webhook-id changed between attempts: {dict(list(unstable.items())[:3])}")
    result.check(shared == 0, f"{shared} runs share a webhook-id with another run")
    result.check(
        received_in_outage == 0, f"{received_in_outage} deliveries arrived while the receiver was down"
    )
    result.check(not not_marked, f"{len(not_marked)} run(s) not shown as webhook delivered: {not_marked[:3]}")


def _counts(receiver: WebhookReceiver) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for delivery in receiver.deliveries:
        counts[delivery.run_id] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    return harness.main(run, __doc__ or NAME, argv)


if __name__ == "__main__":
    sys.exit(main())
