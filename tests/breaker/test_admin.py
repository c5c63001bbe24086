"""The staff's room for breakers: live state, actions, validation, live threshold edits."""

from __future__ import annotations

import time

import pytest
from django.contrib.admin.models import LogEntry
from model_bakery import baker

from resilience.breaker import Breaker, CircuitOpen, Policy, get_breaker
from resilience.breaker.stores.redis import RedisStore
from resilience.models import BreakerOverride, BreakerPolicy

CHANGELIST = "/admin/resilience/breakerpolicy/"


def change_url(policy: BreakerPolicy) -> str:
    return f"{CHANGELIST}{policy.pk}/change/"


def form_data(policy: BreakerPolicy, **changes) -> dict:
    data = {
        "name": policy.name,
        "enabled": "on" if policy.enabled else "",
        "failure_threshold": policy.failure_threshold,
        "timeout_seconds": policy.timeout_seconds,
        "half_open_max_calls": policy.half_open_max_calls,
        "success_threshold": policy.success_threshold,
        "override": policy.override,
    }
    data.update(changes)
    return {key: value for key, value in data.items() if value != ""}


def run_action(admin_client, action: str, *policies: BreakerPolicy):
    return admin_client.post(
        CHANGELIST,
        {"action": action, "_selected_action": [p.pk for p in policies]},
        follow=True,
    )


@pytest.fixture
def billing(db) -> BreakerPolicy:
    return baker.make(
        BreakerPolicy,
        name="billing",
        failure_threshold=2,
        timeout_seconds=60,
        half_open_max_calls=1,
        success_threshold=1,
    )


def test_changelist__shows_live_state_coloured_with_failures_and_last_error(admin_client, billing):
    breaker = get_breaker("billing")
    breaker.acquire().failure("first")
    breaker.acquire().failure("HTTP 503 from billing")
    response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    html = response.content.decode()
    assert '<strong style="color: #c62828">open</strong>' in html
    assert "HTTP 503 from billing" in html
    assert '<td class="field-consecutive_failures">2</td>' in html


def test_change_form__shows_live_counts(admin_client, billing):
    get_breaker("billing").acquire().success()
    response = admin_client.get(change_url(billing))
    assert response.status_code == 200
    assert "probe successes in a row" in response.content.decode()


def test_action_reset__closes_reports_count_and_logs_history(admin_client, billing):
    breaker = get_breaker("billing")
    for _ in range(2):
        breaker.acquire().failure("down")
    response = run_action(admin_client, "reset_circuits", billing)
    assert "1 circuit reset." in response.content.decode()
    stats = breaker.stats()
    assert (stats["state"], stats["total_failures"]) == ("closed", 0)
    entry = LogEntry.objects.get(object_id=str(billing.pk))
    assert entry.get_change_message() == "Reset the circuit: closed, counts cleared."


def test_action_force_open_then_clear__holds_until_cleared(admin_client, billing):
    other = baker.make(BreakerPolicy, name="search")
    response = run_action(admin_client, "force_open_circuits", billing, other)
    assert "2 circuits forced open." in response.content.decode()
    assert set(
        BreakerPolicy.objects.values_list("override", flat=True).filter(
            name__in=["billing", "search"]
        )
    ) == {BreakerOverride.FORCE_OPEN}
    with pytest.raises(CircuitOpen):
        get_breaker("billing").acquire()
    html = admin_client.get(CHANGELIST).content.decode()
    assert "forced open (closed)" in html

    response = run_action(admin_client, "clear_overrides", billing)
    assert "1 override cleared." in response.content.decode()
    get_breaker("billing").acquire().success()
    with pytest.raises(CircuitOpen):
        get_breaker("search").acquire()
    assert LogEntry.objects.filter(object_id=str(billing.pk)).count() == 2


def test_action_force_closed__admits_an_open_circuit(admin_client, billing):
    breaker = get_breaker("billing")
    for _ in range(2):
        breaker.acquire().failure("down")
    run_action(admin_client, "force_closed_circuits", billing)
    breaker.acquire().failure("still counted, never opens")
    assert BreakerPolicy.objects.get(pk=billing.pk).override == BreakerOverride.FORCE_CLOSED


@pytest.mark.parametrize(
    ("field", "explanation"),
    [
        ("failure_threshold", "below 1 it would open before anything failed"),
        ("timeout_seconds", "a failing service would be probed on every call"),
        ("half_open_max_calls", "it would never close"),
        ("success_threshold", "must succeed to close the circuit"),
    ],
)
@pytest.mark.parametrize("value", [0, -3])
def test_change_form__numbers_below_one_refused_with_an_explanation(
    admin_client, billing, field, explanation, value
):
    response = admin_client.post(change_url(billing), form_data(billing, **{field: value}))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == [field]
    assert explanation in errors[field][0]
    billing.refresh_from_db()
    assert getattr(billing, field) >= 1


def test_change_form__number_above_the_maximum_refused(admin_client, billing):
    response = admin_client.post(change_url(billing), form_data(billing, failure_threshold=10**6))
    assert "failure_threshold" in response.context["adminform"].form.errors
    billing.refresh_from_db()
    assert billing.failure_threshold == 2


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_change_form__threshold_edit_applies_to_the_running_fleet_keeping_state(
    admin_client, redis_backend
):
    policy = baker.make(BreakerPolicy, name="live", failure_threshold=5, timeout_seconds=60)
    # A worker elsewhere in the fleet: its own store and snapshot, refreshed as in production.
    worker = Breaker("live", RedisStore("live", Policy(failure_threshold=5), snapshot_max_age=0))
    for _ in range(2):
        worker.acquire().failure("down")

    response = admin_client.post(change_url(policy), form_data(policy, failure_threshold=3))
    assert response.status_code == 302

    assert worker.stats()["failure_count"] == 2  # state kept
    assert worker.policy.failure_threshold == 3
    worker.acquire().failure("down")
    assert worker.stats()["state"] == "open"
    assert LogEntry.objects.filter(object_id=str(policy.pk)).exists()


def test_changelist__redis_unreachable_shows_the_state_unknown_not_this_workers_view(
    admin_client, private_redis_backend, billing
):
    get_breaker("billing").stats()  # the admin's own process last saw the circuit closed
    fleet_worker = Breaker("billing", RedisStore("billing", Policy(failure_threshold=2)))
    for _ in range(2):
        fleet_worker.acquire().failure("HTTP 503 from billing")
    private_redis_backend.stop()

    html = admin_client.get(CHANGELIST).content.decode()
    assert '<strong style="color: #757575">unknown</strong>' in html
    assert "Redis unreachable: this worker&#x27;s own view: closed" in html
    assert "#2e7d32" not in html  # nothing coloured as a known, healthy state
    assert '<td class="field-consecutive_failures">-</td>' in html


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_change_form__threshold_edit_with_redis_down_warns_and_reaches_the_fleet_later(
    admin_client, private_redis_backend
):
    policy = baker.make(BreakerPolicy, name="live", failure_threshold=5, timeout_seconds=60)
    worker = Breaker("live", RedisStore("live", Policy(failure_threshold=5), snapshot_max_age=0))
    worker.stats()
    admin_side = get_breaker("live")  # the breaker of the process serving the admin
    admin_side.store.retry_interval = 0.05
    admin_side.stats()
    private_redis_backend.stop()

    response = admin_client.post(
        change_url(policy), form_data(policy, failure_threshold=2), follow=True
    )
    warnings = [str(m) for m in response.context["messages"] if m.level_tag == "warning"]
    assert len(warnings) == 1
    assert "running workers still use the previous numbers" in warnings[0]
    assert BreakerPolicy.objects.get(pk=policy.pk).failure_threshold == 2

    private_redis_backend.start()
    time.sleep(0.1)
    assert worker.stats()["policy"]["failure_threshold"] == 5
    admin_client.get(CHANGELIST)  # the admin process's first round trip writes the policy
    assert worker.stats()["policy"]["failure_threshold"] == 2
    response = admin_client.post(
        change_url(policy), form_data(policy, failure_threshold=3), follow=True
    )
    assert not [m for m in response.context["messages"] if m.level_tag == "warning"]
    assert worker.stats()["policy"]["failure_threshold"] == 3
