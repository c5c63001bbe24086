"""The buffer's admin: read-only rows, computed columns, actions that report counts and log."""

from datetime import timedelta

import pytest
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from resilience.models import BufferedReceipt, ReceiptStatus
from tests.conftest import point_at

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:resilience_bufferedreceipt_changelist")


def act(admin_client, action: str, rows) -> str:
    response = admin_client.post(
        CHANGELIST,
        {"action": action, "_selected_action": [r.pk for r in rows], "post": "yes"},
        follow=True,
    )
    assert response.status_code == 200
    return " ".join(str(m) for m in response.context["messages"])


def test_admin__changelist_columns_and_filters(admin_client, buffered, settings):
    point_at(settings, "http://mg.invalid", api_key="sekr3t-api-key")
    (due,) = buffered(1, last_error="HTTP 503: down")
    buffered(1, next_attempt_at=timezone.now() + timedelta(minutes=3, seconds=5))
    buffered(1, status=ReceiptStatus.DEAD)

    response = admin_client.get(CHANGELIST)
    html = response.content.decode()

    assert response.status_code == 200
    assert "HTTP 503: down" in html
    assert ">due<" in html
    assert "in 3\xa0minutes" in html
    assert "—" in html
    assert "sekr3t-api-key" not in html
    for query in (
        "status__exact=dead",
        "receipt_type__exact=task.completed",
        f"tenant_id={due.tenant_id}",
    ):
        assert admin_client.get(f"{CHANGELIST}?{query}").status_code == 200
    dead_only = admin_client.get(f"{CHANGELIST}?status__exact=dead").context["cl"].result_count
    assert dead_only == 1


def test_admin__no_add_and_a_read_only_pretty_payload(admin_client, buffered):
    (row,) = buffered(1)

    add = admin_client.get(reverse("admin:resilience_bufferedreceipt_add"))
    change = admin_client.get(reverse("admin:resilience_bufferedreceipt_change", args=[row.pk]))
    html = change.content.decode()

    assert add.status_code == 403
    assert change.status_code == 200
    assert "<pre" in html
    assert "&quot;receipt_id&quot;: &quot;" + str(row.receipt_id) in html
    assert 'name="payload"' not in html  # not an editable field


def test_admin__retry_now_makes_pending_and_dead_rows_due(admin_client, buffered):
    later = timezone.now() + timedelta(hours=1)
    rows = buffered(2, next_attempt_at=later) + buffered(1, status=ReceiptStatus.DEAD)
    delivered = buffered(1, status=ReceiptStatus.DELIVERED)

    message = act(admin_client, "retry_now", rows + delivered)

    assert "3 receipts retried now" in message
    assert BufferedReceipt.objects.due().count() == 3
    assert BufferedReceipt.objects.filter(status=ReceiptStatus.DELIVERED).count() == 1
    assert LogEntry.objects.filter(action_flag=CHANGE).count() == 3


def test_admin__requeue_dead_resets_attempts(admin_client, buffered):
    dead = buffered(2, status=ReceiptStatus.DEAD, attempts=12)
    pending = buffered(1)

    message = act(admin_client, "requeue_dead", dead + pending)

    assert "2 receipts requeued" in message
    assert set(BufferedReceipt.objects.values_list("status", "attempts")) == {("pending", 0)}
    logged = LogEntry.objects.filter(action_flag=CHANGE)
    assert {e.object_repr for e in logged} == {str(r.receipt_id) for r in dead}


def test_admin__discard_deletes_and_logs(admin_client, buffered):
    rows = buffered(3)

    message = act(admin_client, "discard", rows[:2])

    assert "2 receipts discarded" in message
    assert list(BufferedReceipt.objects.values_list("pk", flat=True)) == [rows[2].pk]
    assert LogEntry.objects.filter(action_flag=DELETION).count() == 2


def staff_client(client, django_user_model, *codenames: str):
    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return client


@pytest.mark.parametrize("action", ["retry_now", "requeue_dead", "discard"])
def test_admin__view_only_staff_can_run_no_action(client, django_user_model, buffered, action):
    staff = staff_client(client, django_user_model, "view_bufferedreceipt")
    dead = buffered(2, status=ReceiptStatus.DEAD, attempts=12)

    page = staff.get(CHANGELIST)
    act(staff, action, dead)

    assert page.status_code == 200
    assert f'value="{action}"' not in page.content.decode()
    assert set(BufferedReceipt.objects.values_list("status", "attempts")) == {("dead", 12)}
    assert not LogEntry.objects.exists()


def test_admin__change_permission_allows_retry_and_requeue_but_not_discard(
    client, django_user_model, buffered
):
    staff = staff_client(
        client, django_user_model, "view_bufferedreceipt", "change_bufferedreceipt"
    )
    dead = buffered(2, status=ReceiptStatus.DEAD, attempts=12)

    assert "2 receipts requeued" in act(staff, "requeue_dead", dead)
    assert "No action selected" in act(staff, "discard", dead)
    assert set(BufferedReceipt.objects.values_list("status", "attempts")) == {("pending", 0)}
