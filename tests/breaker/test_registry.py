"""``get_breaker``: one breaker per policy row per process, in step with the row."""

from __future__ import annotations

import asyncio

import pytest
from model_bakery import baker

from resilience.breaker import CircuitOpen, aget_breaker, get_breaker
from resilience.breaker.stores.memory import MemoryStore
from resilience.breaker.stores.redis import RedisStore
from resilience.models import BreakerOverride, BreakerPolicy


def test_get_breaker__memorygate_without_row_runs_on_settings_defaults(db, settings):
    BreakerPolicy.objects.filter(name="memorygate").delete()
    settings.RESILIENCE = {
        **settings.RESILIENCE,
        "MEMORYGATE_CIRCUIT_BREAKER_FAILURE_THRESHOLD": 7,
        "MEMORYGATE_CIRCUIT_BREAKER_SUCCESS_THRESHOLD": 4,
    }
    policy = get_breaker("memorygate").policy
    assert (policy.failure_threshold, policy.success_threshold) == (7, 4)


def test_get_breaker__unknown_name_is_a_clear_lookup_error(db):
    with pytest.raises(LookupError, match="No breaker policy named 'nope'"):
        get_breaker("nope")


def test_get_breaker__loads_the_row_once_per_process(db, django_assert_num_queries):
    baker.make(BreakerPolicy, name="billing", failure_threshold=9, timeout_seconds=30)
    with django_assert_num_queries(1):
        first = get_breaker("billing")
        for _ in range(5):
            assert get_breaker("billing") is first
            first.acquire().success()
    assert (first.name, first.policy.failure_threshold, first.enabled) == ("billing", 9, True)


def test_get_breaker__store_follows_the_backend_setting(db, redis_backend):
    assert isinstance(get_breaker("memorygate").store, RedisStore)


def test_get_breaker__memory_store_by_default(db):
    assert isinstance(get_breaker("memorygate").store, MemoryStore)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_aget_breaker__loads_through_sync_to_async():
    baker.make(BreakerPolicy, name="async-one", failure_threshold=1, timeout_seconds=30)

    async def scenario():
        breaker = await aget_breaker("async-one")
        await (await breaker.aacquire()).afailure("down")
        with pytest.raises(CircuitOpen):
            await breaker.aacquire()
        return breaker

    breaker = asyncio.run(scenario())
    assert breaker is get_breaker("async-one")


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_get_breaker__inside_an_event_loop_loads_off_the_loop():
    baker.make(BreakerPolicy, name="loop-one", failure_threshold=4, timeout_seconds=30)

    async def scenario():
        return get_breaker("loop-one").policy.failure_threshold

    assert asyncio.run(scenario()) == 4


def test_policy_save__applies_to_this_process_memory_breaker_on_commit(
    db, django_capture_on_commit_callbacks
):
    row = baker.make(BreakerPolicy, name="edit-me", failure_threshold=5, timeout_seconds=30)
    breaker = get_breaker("edit-me")
    for _ in range(2):
        breaker.acquire().failure("down")
    row.failure_threshold = 3
    with django_capture_on_commit_callbacks(execute=True):
        row.save()
    assert breaker.stats()["failure_count"] == 2
    breaker.acquire().failure("down")
    assert breaker.stats()["state"] == "open"


def test_policy_bulk_update__applies_to_the_running_breaker_keeping_state(
    db, django_capture_on_commit_callbacks
):
    baker.make(BreakerPolicy, name="bulk", failure_threshold=5, timeout_seconds=30)
    breaker = get_breaker("bulk")
    for _ in range(2):
        breaker.acquire().failure("down")
    with django_capture_on_commit_callbacks(execute=True):
        BreakerPolicy.objects.filter(name="bulk").update(failure_threshold=3)
    assert breaker.policy.failure_threshold == 3
    assert breaker.stats()["failure_count"] == 2
    breaker.acquire().failure("down")
    assert breaker.stats()["state"] == "open"


def test_policy_save__disabling_reaches_the_running_breaker(db, django_capture_on_commit_callbacks):
    row = baker.make(BreakerPolicy, name="switch", enabled=True)
    breaker = get_breaker("switch")
    row.enabled = False
    with django_capture_on_commit_callbacks(execute=True):
        row.save()
    assert breaker.enabled is False


def test_force_open__persists_the_override_on_the_row_and_clears_it(db):
    baker.make(BreakerPolicy, name="ops")
    breaker = get_breaker("ops")
    breaker.force_open()
    assert BreakerPolicy.objects.get(name="ops").override == BreakerOverride.FORCE_OPEN
    with pytest.raises(CircuitOpen):
        breaker.acquire()
    breaker.force_closed()
    assert BreakerPolicy.objects.get(name="ops").override == BreakerOverride.FORCE_CLOSED
    breaker.clear_override()
    assert BreakerPolicy.objects.get(name="ops").override == BreakerOverride.NONE
    breaker.acquire().success()


def test_get_breaker__new_process_starts_with_the_persisted_override(db):
    baker.make(BreakerPolicy, name="held", override=BreakerOverride.FORCE_OPEN)
    with pytest.raises(CircuitOpen):
        get_breaker("held").acquire()


def test_get_breaker__redis_refresh_timeout_is_twice_the_cache_socket_timeout(db, redis_backend):
    assert get_breaker("memorygate").store.refresh_timeout == 4.0  # the suite's 2 s timeouts
