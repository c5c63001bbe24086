"""Fixtures of the breaker suite: a hand-driven clock, and each store built the same way.

``store_factory`` is parametrised over the memory and the Redis store so one contract suite holds
the Python state machine and the Lua script to the same answers; the Redis store gets the test's
clock through the script's "now" argument and refreshes its snapshot on every call.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from resilience.breaker import Breaker, Policy, forget_breakers
from resilience.breaker.stores.memory import MemoryStore
from resilience.breaker.stores.redis import RedisStore

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


class FakeClock:
    """Wall-clock seconds that move only when the test says so."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def _fresh_breakers() -> Iterator[None]:
    forget_breakers()
    yield
    forget_breakers()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


StoreFactory = Callable[..., Breaker]


@pytest.fixture(params=["memory", "redis"])
def make_breaker(request, clock: FakeClock) -> StoreFactory:
    """``make_breaker(**policy)``: a breaker named ``t`` on the parametrised store."""
    if request.param == "redis":
        request.getfixturevalue("redis_backend")

    def make(name: str = "t", lease: float = 10.0, **policy) -> Breaker:
        if request.param == "memory":
            store = MemoryStore(name, Policy(**policy), clock=clock, probe_lease_seconds=lease)
        else:
            store = RedisStore(
                name, Policy(**policy), clock=clock, probe_lease_seconds=lease, snapshot_max_age=0
            )
        return Breaker(name, store)

    make.kind = request.param  # type: ignore[attr-defined]
    return make


def worker_env(redis_url: str) -> dict[str, str]:
    """Environment of a worker process: the project's settings on the test's Redis."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="asyncgate_site.settings",
        PYTHONPATH=str(PROJECT_ROOT),
        REDIS_URL=redis_url,
        RATE_LIMIT_BACKEND="redis",
        SECRET_KEY="breaker-worker-test-key",
    )
    return env


def start_worker(redis_url: str, *args: str) -> subprocess.Popen:
    """``python -m tests.breaker.worker args...`` as its own OS process, lines on stdout."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.breaker.worker", *args],
        cwd=PROJECT_ROOT,
        env=worker_env(redis_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
