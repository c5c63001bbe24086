"""What the Redis store costs and shares: round trips, snapshots, totals, policy, fallback."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import redis

from resilience.breaker import Breaker, CircuitOpen, Policy, get_breaker
from resilience.breaker.stores.redis import SCRIPT_COMMANDS, RedisStore


def commands(client: redis.Redis) -> int:
    """Commands clients sent (``INFO commandstats`` also counts those the Lua script runs)."""
    stats = client.info("commandstats")
    return sum(
        value["calls"]
        for key, value in stats.items()
        if key.removeprefix("cmdstat_") not in SCRIPT_COMMANDS | {"info"}
    )


def test_round_trips__healthy_call_none_failure_one_reset_success_one(private_redis_backend):
    client = redis.Redis(port=private_redis_backend.port)
    breaker = Breaker("cost", RedisStore("cost", Policy(failure_threshold=5), snapshot_max_age=60))
    breaker.acquire().success()  # loads the script and the first snapshot
    before = commands(client)
    for _ in range(200):
        breaker.acquire().success()
    assert commands(client) == before
    breaker.acquire().failure("down")
    assert commands(client) == before + 1
    breaker.acquire().success()  # resets a count the snapshot shows: one round trip
    assert commands(client) == before + 2
    breaker.acquire().success()
    assert commands(client) == before + 2
    assert breaker.stats()["failure_count"] == 0


def test_snapshot__another_worker_sees_the_circuit_open_within_its_refresh_period(redis_backend):
    opener = Breaker("fleet-open", RedisStore("fleet-open", Policy(failure_threshold=2)))
    other = Breaker("fleet-open", RedisStore("fleet-open", Policy(failure_threshold=2)))
    other.acquire().success()  # fresh snapshot: closed
    for _ in range(2):
        opener.acquire().failure("down")
    opened = time.monotonic()
    while True:
        try:
            other.acquire().success()
        except CircuitOpen:
            break
        time.sleep(0.01)
    assert time.monotonic() - opened < 1.0


def test_totals__local_counts_reach_the_hash_with_the_next_round_trip(redis_backend):
    policy = Policy(failure_threshold=5)
    worker = Breaker("totals", RedisStore("totals", policy, snapshot_max_age=60))
    admin = Breaker("totals", RedisStore("totals", policy))
    for _ in range(10):
        worker.acquire().success()
    assert admin.stats()["total_calls"] == 1  # the first call's round trip; nine wait locally
    worker.acquire().failure("down")  # the next round trip carries the nine local calls
    stats = admin.stats()
    assert (stats["total_calls"], stats["total_successes"], stats["total_failures"]) == (11, 10, 1)


def test_totals__local_counts_from_before_a_reset_are_dropped(redis_backend):
    policy = Policy(failure_threshold=5)
    worker = Breaker("gen", RedisStore("gen", policy, snapshot_max_age=60))
    admin = Breaker("gen", RedisStore("gen", policy))
    worker.acquire().success()
    for _ in range(5):
        worker.acquire().success()
    admin.reset()
    worker.acquire().failure("after reset")
    stats = admin.stats()
    assert (stats["total_calls"], stats["total_successes"], stats["total_failures"]) == (0, 0, 1)


def test_policy__the_hash_wins_over_a_late_process_seed(redis_backend):
    first = Breaker("seeded", RedisStore("seeded", Policy(failure_threshold=2)))
    first.stats()
    late = Breaker("seeded", RedisStore("seeded", Policy(failure_threshold=9)))
    for _ in range(2):
        late.acquire().failure("down")
    assert late.stats()["state"] == "open"
    assert late.policy.failure_threshold == 2


def test_async__aacquire_and_asettle_use_the_shared_state(redis_backend):
    sync_side = Breaker("async", RedisStore("async", Policy(failure_threshold=2)))

    async def scenario():
        breaker = Breaker("async", RedisStore("async", Policy(failure_threshold=2)))
        for _ in range(2):
            await (await breaker.aacquire()).afailure("down")
        return await breaker.astats()

    assert asyncio.run(scenario())["state"] == "open"
    with pytest.raises(CircuitOpen):
        sync_side.acquire()


def test_fallback__redis_stopped_calls_flow_through_local_state(private_redis_backend, db, caplog):
    caplog.set_level(logging.INFO, logger="resilience.breaker")
    breaker = get_breaker("memorygate")
    breaker.store.retry_interval = 0.2
    breaker.acquire().success()
    assert breaker.stats()["store"] == "redis"
    private_redis_backend.stop()

    for _ in range(50):
        breaker.acquire().success()

    async def async_call():
        await (await breaker.aacquire()).asuccess()

    asyncio.run(async_call())
    assert breaker.stats()["store"] == "memory-fallback"
    threshold = breaker.policy.failure_threshold
    for _ in range(threshold):
        breaker.acquire().failure("down")
    with pytest.raises(CircuitOpen):
        breaker.acquire()  # the local state still protects the downstream service
    outage_logs = [r for r in caplog.records if "Redis store unavailable" in r.getMessage()]
    assert len(outage_logs) == 1

    private_redis_backend.start()
    time.sleep(0.25)
    breaker.acquire().success()
    assert breaker.stats()["store"] == "redis"
    assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_enabled__a_bypassing_worker_learns_the_breaker_was_enabled_again(redis_backend):
    admin = RedisStore("toggle", Policy())
    worker = Breaker("toggle", RedisStore("toggle", Policy(), snapshot_max_age=0))
    worker.acquire().success()
    admin.configure(Policy(enabled=False))
    worker.acquire().success()  # this call's round trip brings the news
    assert worker.enabled is False
    admin.configure(Policy(enabled=True))
    assert worker.enabled is True  # read without acquire(): callers bypass a disabled breaker


def test_enabled__inside_an_event_loop_refreshes_without_blocking(redis_backend):
    admin = RedisStore("toggle-async", Policy())
    admin.configure(Policy(enabled=False))

    async def scenario():
        worker = Breaker("toggle-async", RedisStore("toggle-async", Policy(), snapshot_max_age=0))
        await worker.astats()
        first = worker.enabled
        admin.configure(Policy(enabled=True))
        stale = worker.enabled  # schedules the refresh on the loop, answers from the snapshot
        for _ in range(100):
            await asyncio.sleep(0.01)
            if worker.enabled:
                break
        return first, stale, worker.enabled

    assert asyncio.run(scenario()) == (False, False, True)


def test_poll__a_refresh_cancelled_before_it_ran_leaves_nothing_behind(redis_backend):
    admin = RedisStore("cancelled", Policy())
    admin.configure(Policy(enabled=False))
    worker = Breaker("cancelled", RedisStore("cancelled", Policy(), snapshot_max_age=0.05))
    worker.stats()
    time.sleep(0.1)

    async def shut_down_early():
        assert worker.enabled is False  # schedules a refresh on this loop
        for task in asyncio.all_tasks():  # a server shutting down before it got its turn
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.sleep(0)

    asyncio.run(shut_down_early())
    admin.configure(Policy(enabled=True))
    time.sleep(0.1)
    assert worker.enabled is True


def left_behind_refresh(store: RedisStore) -> None:
    """Schedule a refresh on an event loop that closes before the refresh ever runs."""

    async def refresh():
        store.poll()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(refresh())
        never_run = asyncio.all_tasks(loop)
    finally:
        loop.close()
    for task in never_run:
        task.get_coro().close()  # so it warns of nothing when collected


def test_poll__a_refresh_left_behind_by_a_closed_event_loop_is_given_up(redis_backend):
    admin = RedisStore("abandoned", Policy())
    admin.configure(Policy(enabled=False))
    store = RedisStore("abandoned", Policy(), snapshot_max_age=0.05, refresh_timeout=0.3)
    worker = Breaker("abandoned", store)
    worker.stats()
    time.sleep(0.1)
    left_behind_refresh(store)
    admin.configure(Policy(enabled=True))
    deadline = time.monotonic() + 2
    while not worker.enabled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.enabled is True


def test_snapshot__a_refresh_left_behind_does_not_hide_a_circuit_the_fleet_opened(redis_backend):
    policy = Policy(failure_threshold=1)
    opener = Breaker("hidden", RedisStore("hidden", policy))
    store = RedisStore("hidden", policy, snapshot_max_age=0.05, refresh_timeout=0.3)
    worker = Breaker("hidden", store)
    worker.acquire().success()
    time.sleep(0.1)
    left_behind_refresh(store)
    opener.acquire().failure("down")
    deadline = time.monotonic() + 2
    with pytest.raises(CircuitOpen):  # calls until the worker sees the circuit open
        while time.monotonic() < deadline:
            worker.acquire().success()
            time.sleep(0.05)
