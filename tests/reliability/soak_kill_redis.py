"""2,000 async runs (fast: 200) on Redis (a real redis-server, AOF on) served by two replicas;
one replica is killed with kill -9 five times and restarted while the other keeps serving: every
accepted run ends, none is lost, none runs past its attempts."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.redis_server import RedisServer, redis_server_path
from tests.reliability import harness
from tests.reliability.killing import kill_campaign

NAME = "soak_kill_redis"


def run(scale: str, seed: int) -> harness.Result:
    result = harness.Result(NAME, scale, seed)
    if redis_server_path() is None:
        result.skipped = "redis-server is not installed (make system-packages installs it)"
        return result
    with tempfile.TemporaryDirectory(prefix="soak-redis-") as scratch:
        redis = RedisServer.start(Path(scratch) / "redis")
        try:
            kill_campaign(result, Path(scratch), redis.url, replicas=2)
        finally:
            redis.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    return harness.main(run, __doc__ or NAME, argv)


if __name__ == "__main__":
    sys.exit(main())
