"""The demo: during a simulated MemoryGate outage an operator sees it on the status page and in
the metrics within seconds, then resets the circuit from the page and delivery resumes.

Real parts only: the stub MemoryGate (a child process) failing with 503, the breaker's state in
Redis, receipts written to the test database, the admin page and the metrics endpoint served by
Django's test client.
"""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from resilience.breaker import get_breaker
from resilience.models import BreakerPolicy, BufferedReceipt, ReceiptStatus
from tests.conftest import point_at
from tests.ops.conftest import METRICS_TOKEN, metric_value, scraped_value

pytestmark = pytest.mark.django_db

STATUS_URL = "/admin/resilience/status/"


@pytest.fixture
def outage(memorygate, patient_redis, settings, emit):
    """MemoryGate answering 503 to every receipt until the test clears the fault."""
    point_at(settings, memorygate.url, memorygate.api_key, METRICS_TOKEN=METRICS_TOKEN)
    memorygate.set_faults(fail_next=1000, fail_status=503)
    return memorygate


def test_outage__status_page_and_metrics_show_open_circuit_and_buffered_receipts(
    outage, admin_client, client, emit
):
    threshold = get_breaker("memorygate").policy.failure_threshold
    buffered_before = metric_value("resilience_receipts_buffered_total")
    opened_before = metric_value(
        "resilience_breaker_transitions_total", policy="memorygate", state="open"
    )

    results = [emit() for _ in range(threshold + 2)]

    assert {r["status"] for r in results} == {"buffered"}
    assert outage.stats()["received"] == threshold  # then the open circuit sent nothing

    page = admin_client.get(STATUS_URL)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-breaker="memorygate" data-state="open"' in html
    assert "HTTP 503" in html  # the last error
    (breaker,) = [b["status"] for b in page.context["breakers"] if b["status"].name == "memorygate"]
    assert (breaker.state, breaker.failure_count) == ("open", threshold)
    assert breaker.held_seconds is not None and breaker.held_seconds < 30
    buffer = page.context["buffer"]
    assert buffer.by_status[ReceiptStatus.PENDING] == threshold + 2
    assert buffer.buffered == threshold + 2
    assert buffer.oldest_pending_age_seconds is not None
    assert buffer.oldest_pending_age_seconds < 30
    assert buffer.depth_per_minute[-1] == threshold + 2
    assert '<svg class="resilience-chart"' in html

    scrape = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}")
    assert scrape.status_code == 200
    text = scrape.content.decode()
    assert scraped_value(text, "resilience_breaker_state", policy="memorygate", state="open") == 1
    assert scraped_value(text, "resilience_breaker_state", policy="memorygate", state="closed") == 0
    assert scraped_value(text, "resilience_receipts_in_buffer", status="pending") == threshold + 2
    assert scraped_value(text, "resilience_receipts_buffered_total") == buffered_before + (
        threshold + 2
    )
    transitions = "resilience_breaker_transitions_total"
    opened = scraped_value(text, transitions, policy="memorygate", state="open")
    assert opened == opened_before + 1
    assert 0 <= scraped_value(text, "resilience_receipts_oldest_pending_age_seconds") < 30


def test_outage__reset_from_status_page_closes_circuit_and_next_emit_is_delivered(
    outage, admin_client, emit
):
    threshold = get_breaker("memorygate").policy.failure_threshold
    for _ in range(threshold):
        emit()
    assert get_breaker("memorygate").stats()["state"] == "open"
    outage.set_faults(fail_next=0)  # MemoryGate is back; the circuit would wait its timeout

    assert emit()["reason"].startswith("circuit open")
    response = admin_client.post(STATUS_URL, {"breaker": "memorygate"}, follow=True)

    assert response.redirect_chain == [(reverse("admin:resilience_status"), 302)]
    assert "Circuit memorygate reset" in response.content.decode()
    assert get_breaker("memorygate").stats()["state"] == "closed"
    result = emit()
    assert result["status"] == "delivered"
    assert result["receipt_id"] in outage.receipts()
    row = BreakerPolicy.objects.get(name="memorygate")
    entry = LogEntry.objects.get(object_id=str(row.pk))
    assert entry.get_change_message() == "Reset the circuit from the status page."


def test_status_page__reset_of_unknown_breaker_is_refused_and_changes_nothing(
    outage, admin_client, emit
):
    for _ in range(get_breaker("memorygate").policy.failure_threshold):
        emit()

    response = admin_client.post(STATUS_URL, {"breaker": "no-such"}, follow=True)

    assert "No breaker named &#x27;no-such&#x27;; nothing was reset" in response.content.decode()
    assert get_breaker("memorygate").stats()["state"] == "open"
    assert LogEntry.objects.count() == 0


def test_status_page__reset_needs_the_change_permission(outage, client, staff_user, emit):
    for _ in range(get_breaker("memorygate").policy.failure_threshold):
        emit()
    client.force_login(staff_user)

    page = client.get(STATUS_URL)
    refused = client.post(STATUS_URL, {"breaker": "memorygate"})

    assert page.status_code == 200
    assert 'name="breaker"' not in page.content.decode()  # no button without the permission
    assert refused.status_code == 403
    assert get_breaker("memorygate").stats()["state"] == "open"


def test_drain__batch_durations_and_deliveries_reach_the_metrics(outage, emit):
    from resilience.receipts.drain import DrainOptions, drain

    for _ in range(3):
        emit()
    get_breaker("memorygate").reset()
    outage.set_faults(fail_next=0)
    batches_before = metric_value("resilience_drain_batch_duration_seconds_count")
    delivered_before = metric_value("resilience_receipts_delivered_total", path="drain")

    report = drain(DrainOptions(batch_size=2))

    assert report.delivered == 3
    assert BufferedReceipt.objects.filter(status=ReceiptStatus.DELIVERED).count() == 3
    assert metric_value("resilience_drain_batch_duration_seconds_count") == batches_before + 2
    assert metric_value("resilience_receipts_delivered_total", path="drain") == delivered_before + 3
