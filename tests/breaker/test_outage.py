"""Redis stopped (a test-owned server): what a worker's fallback starts from, what refused operator
actions leave behind, and what becomes of a policy saved during the outage.

Each store here stands for one process of the fleet; they share the test's Redis (and its
connection pool), so stopping the server cuts every one of them off at once.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from resilience.breaker import Breaker, CircuitOpen, Override, Policy
from resilience.breaker.stores.redis import RedisStore
from resilience.exceptions import BackendUnavailable


def test_fallback__a_circuit_the_fleet_opened_stays_open_until_its_own_timeout(
    private_redis_backend, clock
):
    policy = Policy(failure_threshold=1, timeout_seconds=60)
    opener = Breaker("fb-open", RedisStore("fb-open", policy, clock=clock))
    worker = Breaker("fb-open", RedisStore("fb-open", policy, clock=clock, snapshot_max_age=0))
    worker.acquire().success()
    opener.acquire().failure("down")
    clock.advance(20)
    with pytest.raises(CircuitOpen):
        worker.acquire()  # this worker has seen the fleet's circuit open
    private_redis_backend.stop()

    with pytest.raises(CircuitOpen) as refused:
        worker.acquire()
    assert refused.value.retry_after == pytest.approx(40)  # counted from the fleet's opened_at
    stats = worker.stats()
    assert (stats["store"], stats["state"]) == ("memory-fallback", "open")
    clock.advance(40)
    assert worker.acquire().is_probe


def test_fallback__keeps_refusing_a_circuit_another_process_forced_open(private_redis_backend):
    operator = Breaker("fb-forced", RedisStore("fb-forced", Policy()))
    worker = Breaker("fb-forced", RedisStore("fb-forced", Policy(), snapshot_max_age=0))
    worker.acquire().success()
    operator.force_open()
    with pytest.raises(CircuitOpen):
        worker.acquire()
    private_redis_backend.stop()

    for _ in range(3):
        with pytest.raises(CircuitOpen):
            worker.acquire()
    assert worker.stats()["override"] == "force_open"


def test_fallback__runs_on_the_policy_another_process_saved(private_redis_backend):
    operator = RedisStore("fb-policy", Policy(failure_threshold=5))
    worker = Breaker(
        "fb-policy", RedisStore("fb-policy", Policy(failure_threshold=5), snapshot_max_age=0)
    )
    worker.acquire().success()
    operator.configure(Policy(failure_threshold=1))
    worker.acquire().success()  # this round trip brings the new policy
    private_redis_backend.stop()

    worker.acquire().failure("down")
    with pytest.raises(CircuitOpen):
        worker.acquire()


@pytest.fixture
def open_in_outage(private_redis_backend, clock) -> Breaker:
    """A breaker the fleet opened, in a process that has since lost Redis."""
    policy = Policy(failure_threshold=1, timeout_seconds=60)
    breaker = Breaker("op", RedisStore("op", policy, clock=clock, snapshot_max_age=0))
    breaker.acquire().failure("down")
    private_redis_backend.stop()
    with pytest.raises(CircuitOpen):
        breaker.acquire()  # the outage begins: the fallback holds the fleet's open circuit
    return breaker


def test_reset__refused_by_an_unreachable_redis_leaves_the_local_fallback_as_it_was(
    open_in_outage,
):
    with pytest.raises(BackendUnavailable):
        open_in_outage.reset()
    with pytest.raises(CircuitOpen):
        open_in_outage.acquire()
    assert open_in_outage.stats()["total_failures"] == 1


def test_set_override__refused_by_an_unreachable_redis_leaves_the_local_fallback_as_it_was(
    open_in_outage,
):
    with pytest.raises(BackendUnavailable):
        open_in_outage.force_closed()
    with pytest.raises(CircuitOpen):
        open_in_outage.acquire()
    assert open_in_outage.stats()["override"] == ""
    assert open_in_outage.policy.override == Override.NONE


def test_configure__a_policy_saved_during_the_outage_is_written_by_the_next_round_trip(
    private_redis_backend, caplog
):
    caplog.set_level(logging.INFO, logger="resilience.breaker")
    admin = RedisStore("later", Policy(failure_threshold=5), retry_interval=0.05)
    worker = RedisStore("later", Policy(failure_threshold=5))
    admin.stats()
    private_redis_backend.stop()
    with pytest.raises(BackendUnavailable):
        admin.configure(Policy(failure_threshold=2))
    assert admin.unapplied_policy == Policy(failure_threshold=2)
    assert admin.policy.failure_threshold == 5  # the fleet's, as last seen

    private_redis_backend.start()
    time.sleep(0.1)
    assert worker.stats()["policy"]["failure_threshold"] == 5
    asyncio.run(admin.astats())  # any round trip that succeeds delivers it
    assert worker.stats()["policy"]["failure_threshold"] == 2
    assert admin.unapplied_policy is None
    assert any("is applied now" in record.getMessage() for record in caplog.records)


def test_configure__a_policy_saved_during_the_outage_yields_to_one_saved_later_elsewhere(
    private_redis_backend, caplog
):
    admin = RedisStore("race", Policy(failure_threshold=5), retry_interval=0.05)
    other_admin = RedisStore("race", Policy(failure_threshold=5))
    admin.stats()
    private_redis_backend.stop()
    with pytest.raises(BackendUnavailable):
        admin.configure(Policy(failure_threshold=2))

    private_redis_backend.start()
    time.sleep(0.1)
    other_admin.configure(Policy(failure_threshold=7))
    assert admin.stats()["policy"]["failure_threshold"] == 7
    assert admin.unapplied_policy is None
    assert any("is dropped" in record.getMessage() for record in caplog.records)
