"""``state_since``: when a breaker entered its current state, on both stores, with a fake clock."""

from __future__ import annotations

import pytest

from resilience.breaker import Breaker, Policy
from resilience.breaker.stores.memory import MemoryStore
from resilience.breaker.stores.redis import RedisStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
def breaker(request) -> tuple[Breaker, FakeClock]:
    clock = FakeClock()
    policy = Policy(failure_threshold=2, timeout_seconds=30, success_threshold=1)
    if request.param == "redis":
        request.getfixturevalue("redis_backend")
        store = RedisStore("since", policy, clock=clock, snapshot_max_age=0)
    else:
        store = MemoryStore("since", policy, clock=clock)
    return Breaker("since", store), clock


def since(breaker: Breaker) -> float:
    return breaker.stats()["state_since"].timestamp()


def test_state_since__follows_every_transition(breaker):
    breaker, clock = breaker
    start = clock.now
    assert breaker.stats()["state"] == "closed"
    assert since(breaker) == pytest.approx(start)

    clock.now += 5
    breaker.acquire().failure("a")
    assert since(breaker) == pytest.approx(start), "a failure below the threshold is no move"
    clock.now += 5
    breaker.acquire().failure("b")
    assert breaker.stats()["state"] == "open"
    assert since(breaker) == pytest.approx(start + 10)

    clock.now += 31
    permit = breaker.acquire()
    assert breaker.stats()["state"] == "half_open"
    assert since(breaker) == pytest.approx(start + 41)

    clock.now += 1
    permit.success()
    assert breaker.stats()["state"] == "closed"
    assert since(breaker) == pytest.approx(start + 42)


def test_state_since__reset_of_an_open_circuit_restarts_it_and_of_a_closed_one_keeps_it(breaker):
    breaker, clock = breaker
    start = clock.now
    clock.now += 3
    breaker.reset()
    assert since(breaker) == pytest.approx(start)
    breaker.acquire().failure("a")
    breaker.acquire().failure("b")
    clock.now += 7
    breaker.reset()
    stats = breaker.stats()
    assert stats["state"] == "closed"
    assert since(breaker) == pytest.approx(start + 10)


def test_state_since__hash_written_before_the_field_existed_reads_as_unknown(redis_backend):
    clock = FakeClock()
    store = RedisStore("legacy", Policy(), clock=clock, snapshot_max_age=0)
    breaker = Breaker("legacy", store)
    breaker.stats()
    from resilience.redis import get_sync_client

    get_sync_client("default").hdel(store.keys[0], "state_since")
    stats = breaker.stats()
    assert stats["state"] == "closed"
    assert stats["state_since"] is None
