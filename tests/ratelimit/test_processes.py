"""Several real OS processes sharing Redis and the test database.

Workers (``tests/ratelimit/worker.py``) run Django's full request handler with the site's own
settings, read rules from the test database and count in the suite's Redis database.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from model_bakery import baker

from resilience.models import RateLimitRule
from tests.conftest import PROJECT_ROOT
from tests.ratelimit.conftest import use_settings

pytestmark = pytest.mark.slow
WORKER_TIMEOUT = 60


@pytest.fixture
def worker_env(child_env, redis_backend, limiting, settings) -> dict[str, str]:
    use_settings(settings, RATE_LIMIT_BACKEND="redis")  # so this process publishes changes
    return {
        **child_env,
        "REDIS_URL": redis_backend,
        "RATE_LIMIT_ENABLED": "true",
        "RATE_LIMIT_BACKEND": "redis",
        "RESILIENCE_LOG_LEVEL": "ERROR",
        "DEBUG": "false",
    }


def start_workers(env: dict[str, str], *args: str, count: int) -> list[subprocess.Popen]:
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.ratelimit.worker", *args],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(count)
    ]
    for worker in workers:
        assert worker.stdout.readline().strip() == "ready"
    return workers


def go(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        worker.stdin.write("go\n")
        worker.stdin.flush()


def test_limit__eight_processes_admit_exactly_the_limit(worker_env):
    baker.make(RateLimitRule, name="hundred", path="/v1/tasks", calls=100, window_seconds=60)
    workers = start_workers(worker_env, "fire", "/v1/tasks", "125", count=8)
    go(workers)
    totals: dict[str, int] = {}
    for worker in workers:
        out, _ = worker.communicate(timeout=WORKER_TIMEOUT)
        for status, count in json.loads(out.strip().splitlines()[-1]).items():
            totals[status] = totals.get(status, 0) + count
    refused = totals.pop("429", 0)
    assert sum(totals.values()) == 100, totals
    assert refused == 900
    assert set(totals) == {"405"}  # admitted requests reached the (GET-refusing) view


@pytest.mark.parametrize("how", ["save", "update"])
def test_registry__a_change_in_one_process_is_in_force_in_another_within_a_second(
    worker_env, how
):
    rule = baker.make(RateLimitRule, name="live", path="/v1/tasks", calls=1000, window_seconds=60)
    (worker,) = start_workers(worker_env, "watch", "/v1/tasks", "7", "5", count=1)
    go([worker])
    first = worker.stdout.readline().split()
    assert first[1] == "1000"
    time.sleep(0.2)
    # Committed at once (autocommit): the on-commit hook bumps the generation in Redis.
    if how == "save":
        rule.calls = 7
        rule.save()
    else:
        RateLimitRule.objects.filter(pk=rule.pk).update(calls=7)
    changed_at = time.time()
    out, _ = worker.communicate(timeout=WORKER_TIMEOUT)
    assert worker.returncode == 0, out
    seen_at = float(out.strip().splitlines()[-1].split()[0])
    assert seen_at - changed_at < 1.0
