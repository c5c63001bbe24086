"""The rate-limit rules admin: list, list edits, actions, form errors, history."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.urls import reverse
from model_bakery import baker

from resilience.models import RateLimitRule
from resilience.registry import registry
from tests.ratelimit.conftest import use_settings

CHANGELIST = reverse("admin:resilience_ratelimitrule_changelist")
ADD = reverse("admin:resilience_ratelimitrule_add")


def make_rule(**kwargs) -> RateLimitRule:
    fields = {"path": "/v1/tasks", "calls": 50, "window_seconds": 60, "key": "ip"}
    return baker.make(RateLimitRule, **{**fields, **kwargs})


def valid_form(**overrides) -> dict:
    data = {
        "name": "create-task",
        "path": "/v1/tasks",
        "methods": "post",
        "calls": "50",
        "window_seconds": "60",
        "key": "api_key",
        "mode": "enforce",
        "algorithm": "sliding_window",
        "key_prefix": "",
        "notes": "",
    }
    return {**data, **overrides}


def list_edit_data(rules, **changes) -> dict:
    data = {
        "form-TOTAL_FORMS": str(len(rules)),
        "form-INITIAL_FORMS": str(len(rules)),
        "form-MIN_NUM_FORMS": "0",
        "form-MAX_NUM_FORMS": "1000",
        "_save": "Save",
    }
    for i, rule in enumerate(rules):
        data[f"form-{i}-id"] = str(rule.pk)
        data[f"form-{i}-calls"] = str(changes.get("calls", rule.calls))
        data[f"form-{i}-window_seconds"] = str(changes.get("window_seconds", rule.window_seconds))
        data[f"form-{i}-mode"] = changes.get("mode", rule.mode)
    return data


def test_admin__list_shows_the_rate_as_people_read_it(admin_client):
    make_rule(name="create-task", methods="POST")
    page = admin_client.get(CHANGELIST).content.decode()
    assert "50 per 60 s" in page and "create-task" in page and "POST" in page
    assert admin_client.get(CHANGELIST, {"q": "create"}).status_code == 200
    assert admin_client.get(CHANGELIST, {"mode__exact": "shadow"}).status_code == 200


def test_admin__add_form_creates_a_rule_and_logs_it(admin_client):
    response = admin_client.post(ADD, valid_form())
    assert response.status_code == 302
    rule = RateLimitRule.objects.get(name="create-task")
    assert rule.methods == "POST"
    assert LogEntry.objects.filter(object_id=str(rule.pk)).exists()


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"calls": "0"}, "calls", "greater than or equal to 1"),
        ({"calls": "-5"}, "calls", "greater than or equal to 1"),
        ({"window_seconds": "0"}, "window_seconds", "greater than or equal to 1"),
        ({"window_seconds": "172800"}, "notes", "needs a note saying why"),
        ({"key": "cookie"}, "key", "Unknown key cookie"),
        ({"path": "v1/tasks"}, "path", "must start with '/'"),
        ({"path": "/v1/*/tasks"}, "path", "not a valid path"),
        ({"methods": "FETCH"}, "methods", "Unknown HTTP method"),
    ],
)
def test_admin__form_errors_say_what_is_wrong_and_change_nothing(
    admin_client, overrides, field, message
):
    response = admin_client.post(ADD, valid_form(**overrides))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert message in " ".join(errors[field])
    assert not RateLimitRule.objects.exists()


def test_admin__long_window_with_a_note_is_accepted(admin_client):
    response = admin_client.post(
        ADD, valid_form(window_seconds="172800", notes="Daily quota for partners.")
    )
    assert response.status_code == 302


def test_admin__list_edit_changes_calls_window_and_mode(
    admin_client, django_capture_on_commit_callbacks
):
    rule = make_rule(name="editable")
    snapshot_before = registry._snapshot
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = admin_client.post(
            CHANGELIST, list_edit_data([rule], calls=10, window_seconds=30, mode="shadow")
        )
    assert response.status_code == 302
    rule.refresh_from_db()
    assert (rule.calls, rule.window_seconds, rule.mode) == (10, 30, "shadow")
    assert callbacks  # the save published the change
    assert registry._stale or registry._snapshot is not snapshot_before
    assert LogEntry.objects.filter(object_id=str(rule.pk), action_flag=CHANGE).exists()


def test_admin__list_edit_errors_are_shown_not_500(admin_client):
    rule = make_rule(name="edited")
    response = admin_client.post(CHANGELIST, list_edit_data([rule], calls=0))
    assert response.status_code == 200
    assert "greater than or equal to 1" in response.content.decode()
    response = admin_client.post(CHANGELIST, list_edit_data([rule], window_seconds=172800))
    assert response.status_code == 200
    assert "needs a note saying why" in response.content.decode()
    rule.refresh_from_db()
    assert (rule.calls, rule.window_seconds) == (50, 60)


@pytest.mark.parametrize(
    ("action", "mode"),
    [("enforce_rules", "enforce"), ("shadow_rules", "shadow"), ("switch_off_rules", "off")],
)
def test_admin__mode_actions_update_log_and_publish(
    admin_client, django_capture_on_commit_callbacks, action, mode
):
    rules = [
        make_rule(name="a", mode="enforce"),
        make_rule(name="b", mode="shadow"),
        make_rule(name="c", mode="off"),
    ]
    registry._stale = False
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            CHANGELIST, {"action": action, "_selected_action": [r.pk for r in rules]}, follow=True
        )
    assert "2 rules set to" in response.content.decode()
    assert set(RateLimitRule.objects.values_list("mode", flat=True)) == {mode}
    assert LogEntry.objects.filter(action_flag=CHANGE).count() == 2
    assert registry._stale  # QuerySet.update sent no signal; the action published the change


def test_admin__reset_counters_action(admin_client, client, redis_backend, limiting, settings):
    use_settings(settings, RATE_LIMIT_BACKEND="redis")
    rule = make_rule(name="resettable", path="/t/sync", calls=1, window_seconds=60)
    make_rule(name="untouched", path="/t/other", calls=1, window_seconds=60)
    assert client.get("/t/sync").status_code == 200
    assert client.get("/t/other").status_code == 200
    assert client.get("/t/sync").status_code == 429
    response = admin_client.post(
        CHANGELIST,
        {"action": "reset_counters", "_selected_action": [rule.pk]},
        follow=True,
    )
    assert "Counters of 1 rule reset (1 keys removed)" in response.content.decode()
    assert client.get("/t/sync").status_code == 200
    assert client.get("/t/other").status_code == 429
    assert LogEntry.objects.filter(object_id=str(rule.pk), change_message="Reset counters.")
