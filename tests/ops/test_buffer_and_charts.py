"""The buffer's figures and its depth over the hour from row timestamps; the inline SVG charts."""

from __future__ import annotations

import datetime

import pytest
from model_bakery import baker

from resilience import charts, status
from resilience.models import BufferedReceipt, ReceiptStatus

NOW = datetime.datetime(2026, 5, 4, 12, 30, 20, tzinfo=datetime.UTC)


def minutes_ago(n: float) -> datetime.datetime:
    return NOW - datetime.timedelta(minutes=n)


def receipt(status_: str, created: float, **fields) -> BufferedReceipt:
    row = baker.make(BufferedReceipt, status=status_, created_at=minutes_ago(created), **fields)
    if "updated_at" in fields:  # auto_now overrides it on save
        BufferedReceipt.objects.filter(pk=row.pk).update(updated_at=fields["updated_at"])
    return row


@pytest.mark.django_db
def test_buffer_status__figures_and_depth_per_minute(django_assert_max_num_queries):
    receipt(ReceiptStatus.DELIVERED, 40, delivered_at=minutes_ago(10))  # in the buffer 40..10
    receipt(ReceiptStatus.PENDING, 5)  # waiting since 5 minutes ago
    receipt(ReceiptStatus.IN_FLIGHT, 3)
    receipt(ReceiptStatus.DEAD, 20, updated_at=minutes_ago(15))  # waited 20..15, then died
    receipt(ReceiptStatus.DELIVERED, 200, delivered_at=minutes_ago(90))  # outside the hour

    with django_assert_max_num_queries(6):
        buffer = status.buffer_status(NOW)

    assert buffer.by_status == {"pending": 1, "in_flight": 1, "delivered": 2, "dead": 1}
    assert buffer.buffered == 2
    assert buffer.oldest_pending_at == minutes_ago(5)
    assert buffer.oldest_pending_age_seconds == 300
    assert buffer.delivered_last_hour == 1
    assert len(buffer.depth_per_minute) == len(buffer.minutes) == 60
    assert buffer.minutes[-1] == NOW.replace(second=0)
    depth = dict(zip(buffer.minutes, buffer.depth_per_minute, strict=True))

    def at(n: int) -> int:
        return depth[NOW.replace(second=0) - datetime.timedelta(minutes=n)]

    assert at(0) == 2  # now: pending + in flight
    assert at(4) == 1  # before the in-flight one arrived
    assert at(6) == 0  # after the 40-minute one was delivered, before the pending one
    assert at(12) == 1  # the 40-minute one, delivered 10 minutes ago
    assert at(17) == 2  # ... and the one that died 15 minutes ago
    assert at(25) == 1
    assert at(45) == 0  # before anything arrived


@pytest.mark.django_db
def test_buffer_status__empty_buffer():
    buffer = status.buffer_status(NOW)

    assert buffer.buffered == 0
    assert buffer.oldest_pending_at is None
    assert buffer.depth_per_minute == [0] * 60


def test_bar_chart__one_bar_per_value_with_exact_values_and_escaped_text():
    svg = charts.bar_chart([0, 3, 6], ["a", "b", "<c>"], title='blocks "&" <script>')

    assert svg.count("<rect") == 3
    assert "<title>b: 3</title>" in svg
    assert "<title>&lt;c&gt;: 6</title>" in svg
    assert "<script>" not in svg
    assert "max 6" in svg
    heights = [float(part.split('"')[0]) for part in svg.split('height="')[2:]]
    assert heights == [0.0, 45.0, 90.0]  # scaled to the largest of 90 px


def test_bar_chart__values_and_labels_must_match():
    with pytest.raises(ValueError, match="same length"):
        charts.bar_chart([1, 2], ["a"], title="t")


def test_sparkline__flat_when_all_zero_and_scaled_otherwise():
    flat = charts.sparkline([0, 0, 0], title="none")
    rising = charts.sparkline([0, 5, 10], title="rising", width=100, height=22)

    assert 'points="0.0,23.0 60.0,23.0 120.0,23.0"' in flat
    assert 'points="0.0,21.0 50.0,11.0 100.0,1.0"' in rising
