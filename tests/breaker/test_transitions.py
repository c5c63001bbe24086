"""Every transition of DESIGN.md's breaker, run against both stores with an injected clock.

The same assertions against the memory store (Python state machine) and the Redis store (the Lua
script, given "now" by the test) hold the two implementations to one behaviour.
"""

from __future__ import annotations

import pytest

from resilience.breaker import CircuitOpen, Outcome, Policy
from resilience.breaker.machine import HALF_OPEN_RETRY_AFTER_CAP


def open_it(breaker, failures: int) -> None:
    for n in range(failures):
        breaker.acquire().failure(f"boom {n}")


def test_closed__stays_closed_below_failure_threshold(make_breaker):
    breaker = make_breaker(failure_threshold=3)
    open_it(breaker, 2)
    stats = breaker.stats()
    assert stats["state"] == "closed"
    assert stats["failure_count"] == 2
    assert stats["last_error"] == "boom 1"
    breaker.acquire().success()


def test_closed__threshold_consecutive_failures_open(make_breaker, clock):
    breaker = make_breaker(failure_threshold=3, timeout_seconds=30)
    open_it(breaker, 3)
    stats = breaker.stats()
    assert stats["state"] == "open"
    assert stats["opened_at"].timestamp() == pytest.approx(clock.now)
    assert stats["total_failures"] == 3
    with pytest.raises(CircuitOpen) as refused:
        breaker.acquire()
    assert refused.value.name == "t"
    assert refused.value.retry_after == pytest.approx(30)


def test_closed__success_resets_the_count(make_breaker):
    breaker = make_breaker(failure_threshold=3)
    open_it(breaker, 2)
    breaker.acquire().success()
    assert breaker.stats()["failure_count"] == 0
    open_it(breaker, 2)
    assert breaker.stats()["state"] == "closed"


def test_closed__ignored_outcome_neither_counts_nor_resets(make_breaker):
    breaker = make_breaker(failure_threshold=2)
    open_it(breaker, 1)
    breaker.acquire().ignore()
    stats = breaker.stats()
    assert (stats["failure_count"], stats["total_successes"]) == (1, 0)
    open_it(breaker, 1)
    assert breaker.stats()["state"] == "open"


def test_open__refuses_with_seconds_left_and_counts_rejections(make_breaker, clock):
    breaker = make_breaker(failure_threshold=1, timeout_seconds=10)
    open_it(breaker, 1)
    clock.advance(4)
    with pytest.raises(CircuitOpen) as refused:
        breaker.acquire()
    assert refused.value.retry_after == pytest.approx(6)
    stats = breaker.stats()
    assert stats["total_rejections"] == 1
    assert stats["total_calls"] == 1


def test_open__after_timeout_next_call_is_a_probe(make_breaker, clock):
    breaker = make_breaker(failure_threshold=1, timeout_seconds=10)
    open_it(breaker, 1)
    clock.advance(10)
    permit = breaker.acquire()
    assert permit.is_probe
    stats = breaker.stats()
    assert stats["state"] == "half_open"
    assert stats["probes_in_flight"] == 1


def test_open__late_failure_of_a_call_admitted_while_closed_changes_nothing(make_breaker, clock):
    breaker = make_breaker(failure_threshold=1, timeout_seconds=10)
    late = breaker.acquire()
    open_it(breaker, 1)
    opened_at = breaker.stats()["opened_at"]
    clock.advance(5)
    late.failure("late")
    stats = breaker.stats()
    assert stats["state"] == "open"
    assert stats["opened_at"] == opened_at
    assert stats["total_failures"] == 2
    assert stats["last_error"] == "late"


def half_open(make_breaker, clock, **policy):
    breaker = make_breaker(failure_threshold=1, timeout_seconds=10, **policy)
    open_it(breaker, 1)
    clock.advance(10)
    return breaker


def test_half_open__at_most_max_calls_probes_in_flight(make_breaker, clock):
    breaker = half_open(make_breaker, clock, half_open_max_calls=2, success_threshold=5)
    probes = [breaker.acquire(), breaker.acquire()]
    with pytest.raises(CircuitOpen) as refused:
        breaker.acquire()
    assert 0 < refused.value.retry_after <= HALF_OPEN_RETRY_AFTER_CAP
    probes[0].ignore()
    assert breaker.acquire().is_probe
    assert breaker.stats()["probes_in_flight"] == 2


def test_half_open__success_threshold_above_max_calls_still_closes(make_breaker, clock):
    breaker = half_open(make_breaker, clock, half_open_max_calls=1, success_threshold=3)
    for expected in (1, 2):
        breaker.acquire().success()
        stats = breaker.stats()
        assert (stats["state"], stats["success_count"]) == ("half_open", expected)
    breaker.acquire().success()
    stats = breaker.stats()
    assert stats["state"] == "closed"
    assert (stats["failure_count"], stats["success_count"], stats["opened_at"]) == (0, 0, None)
    assert not breaker.acquire().is_probe


def test_half_open__probe_failure_reopens_with_a_fresh_timeout(make_breaker, clock):
    breaker = half_open(make_breaker, clock, half_open_max_calls=2, success_threshold=3)
    first, second = breaker.acquire(), breaker.acquire()
    first.success()
    second.failure("still down")
    stats = breaker.stats()
    assert stats["state"] == "open"
    assert stats["success_count"] == 0
    assert stats["probes_in_flight"] == 0
    assert stats["opened_at"].timestamp() == pytest.approx(clock.now)
    with pytest.raises(CircuitOpen) as refused:
        breaker.acquire()
    assert refused.value.retry_after == pytest.approx(10)


def test_half_open__ignored_probe_frees_its_slot_only(make_breaker, clock):
    breaker = half_open(make_breaker, clock, half_open_max_calls=1, success_threshold=2)
    breaker.acquire().success()
    breaker.acquire().ignore()
    stats = breaker.stats()
    assert (stats["state"], stats["success_count"], stats["probes_in_flight"]) == (
        "half_open",
        1,
        0,
    )


def test_half_open__expired_lease_gives_the_slot_back(make_breaker, clock):
    breaker = make_breaker(lease=3, failure_threshold=1, timeout_seconds=10, half_open_max_calls=1)
    open_it(breaker, 1)
    clock.advance(10)
    breaker.acquire()  # a probe whose holder never reports back
    clock.advance(2.9)
    with pytest.raises(CircuitOpen):
        breaker.acquire()
    clock.advance(0.2)
    assert breaker.acquire().is_probe


def test_half_open__late_success_of_an_expired_probe_still_counts(make_breaker, clock):
    breaker = make_breaker(
        lease=1,
        failure_threshold=1,
        timeout_seconds=10,
        half_open_max_calls=1,
        success_threshold=2,
    )
    open_it(breaker, 1)
    clock.advance(10)
    slow = breaker.acquire()
    clock.advance(2)
    breaker.acquire().success()
    slow.success()
    assert breaker.stats()["state"] == "closed"


def test_half_open__a_probe_admitted_before_the_circuit_reopened_does_not_close_it(
    make_breaker, clock
):
    breaker = half_open(make_breaker, clock, half_open_max_calls=2, success_threshold=2)
    stale, reopener = breaker.acquire(), breaker.acquire()
    reopener.failure("still down")
    clock.advance(10)
    fresh = breaker.acquire()  # a new half-open period
    stale.success()
    stats = breaker.stats()
    assert (stats["state"], stats["success_count"]) == ("half_open", 0)
    assert stats["total_successes"] == 1  # the totals still count it
    fresh.success()
    stats = breaker.stats()
    assert (stats["state"], stats["success_count"]) == ("half_open", 1)


def test_half_open__a_late_failure_of_an_earlier_period_probe_does_not_reopen(make_breaker, clock):
    breaker = half_open(make_breaker, clock, half_open_max_calls=2, success_threshold=1)
    stale, reopener = breaker.acquire(), breaker.acquire()
    reopener.failure("still down")
    clock.advance(10)
    fresh = breaker.acquire()
    stale.failure("late news from the previous period")
    stats = breaker.stats()
    assert (stats["state"], stats["probes_in_flight"]) == ("half_open", 1)
    assert stats["last_error"] == "late news from the previous period"
    fresh.success()
    assert breaker.stats()["state"] == "closed"


def test_override__force_open_refuses_even_when_closed(make_breaker):
    breaker = make_breaker(timeout_seconds=7)
    breaker.force_open()
    with pytest.raises(CircuitOpen) as refused:
        breaker.acquire()
    assert refused.value.retry_after == pytest.approx(7)
    stats = breaker.stats()
    assert (stats["state"], stats["override"]) == ("closed", "force_open")
    breaker.clear_override()
    breaker.acquire().success()


def test_override__force_closed_admits_when_open_and_failures_never_open(make_breaker, clock):
    breaker = make_breaker(failure_threshold=1, timeout_seconds=10)
    open_it(breaker, 1)
    breaker.force_closed()
    for _ in range(3):
        breaker.acquire().failure("ignored by the state")
    stats = breaker.stats()
    assert (stats["state"], stats["failure_count"], stats["total_failures"]) == ("open", 1, 4)
    breaker.clear_override()
    with pytest.raises(CircuitOpen):
        breaker.acquire()


def test_reset__closes_and_clears_counts_but_keeps_override_and_policy(make_breaker):
    breaker = make_breaker(failure_threshold=1, timeout_seconds=10)
    open_it(breaker, 1)
    breaker.force_open()
    breaker.reset()
    stats = breaker.stats()
    assert stats["state"] == "closed"
    assert stats["override"] == "force_open"
    assert stats["policy"]["timeout_seconds"] == 10
    for field in ("failure_count", "total_calls", "total_failures", "total_rejections"):
        assert stats[field] == 0, field
    assert (stats["opened_at"], stats["last_failure_time"], stats["last_error"]) == (None, None, "")


def test_configure__new_thresholds_apply_without_losing_state(make_breaker):
    breaker = make_breaker(failure_threshold=5)
    open_it(breaker, 2)
    breaker.store.configure(Policy(failure_threshold=3, timeout_seconds=9))
    assert breaker.stats()["failure_count"] == 2
    open_it(breaker, 1)
    stats = breaker.stats()
    assert stats["state"] == "open"
    assert stats["policy"]["failure_threshold"] == 3


def test_configure__disabled_breaker_admits_everything_and_records_nothing(make_breaker):
    breaker = make_breaker(failure_threshold=1)
    open_it(breaker, 1)
    breaker.store.configure(Policy(enabled=False, failure_threshold=1))
    breaker.stats()  # the Redis store learns the policy from its next round trip
    assert breaker.enabled is False
    permit = breaker.acquire()
    permit.failure("not recorded")
    assert breaker.stats()["total_failures"] == 1


def test_permit__settled_twice_is_an_error(make_breaker):
    breaker = make_breaker()
    permit = breaker.acquire()
    permit.success()
    with pytest.raises(RuntimeError, match="already settled"):
        permit.failure("again")
    assert breaker.stats()["total_failures"] == 0


def test_stats__has_every_documented_field(make_breaker):
    stats = make_breaker().stats()
    documented = {
        "state",
        "failure_count",
        "success_count",
        "total_calls",
        "total_failures",
        "total_successes",
        "total_rejections",
        "opened_at",
        "last_failure_time",
        "last_error",
        "policy",
    }
    assert documented <= set(stats)
    assert set(stats["policy"]) == {
        "enabled",
        "failure_threshold",
        "timeout_seconds",
        "half_open_max_calls",
        "success_threshold",
        "override",
    }


def test_outcome__guard_classifies_returned_values(make_breaker):
    breaker = make_breaker(failure_threshold=2)

    def classify(status: int) -> Outcome:
        return Outcome.FAILURE if status >= 500 else Outcome.SUCCESS

    for _ in range(2):
        with breaker.guard(classify=classify) as call:
            call.observe(503)
    assert breaker.stats()["state"] == "open"
