"""The one POST and its classification, over real HTTP against the stub MemoryGate."""

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from resilience.receipts.schema import build_receipt
from resilience.receipts.transport import (
    MAX_RETRY_AFTER_SECONDS,
    BreakerVerdict,
    MemoryGateTransport,
    OutcomeKind,
    classify_response,
    parse_retry_after,
)


@pytest.mark.parametrize(
    ("status", "kind", "verdict"),
    [
        (200, OutcomeKind.DELIVERED, BreakerVerdict.SUCCESS),
        (201, OutcomeKind.DELIVERED, BreakerVerdict.SUCCESS),
        (409, OutcomeKind.DELIVERED, BreakerVerdict.SUCCESS),
        (400, OutcomeKind.REFUSED, BreakerVerdict.NEITHER),
        (404, OutcomeKind.REFUSED, BreakerVerdict.NEITHER),
        (413, OutcomeKind.REFUSED, BreakerVerdict.NEITHER),
        (422, OutcomeKind.REFUSED, BreakerVerdict.NEITHER),
        (401, OutcomeKind.RETRY, BreakerVerdict.FAILURE),
        (403, OutcomeKind.RETRY, BreakerVerdict.FAILURE),
        (408, OutcomeKind.RETRY, BreakerVerdict.FAILURE),
        (429, OutcomeKind.RETRY, BreakerVerdict.FAILURE),
        (500, OutcomeKind.RETRY, BreakerVerdict.FAILURE),
        (503, OutcomeKind.RETRY, BreakerVerdict.FAILURE),
        (425, OutcomeKind.RETRY, BreakerVerdict.NEITHER),
        (405, OutcomeKind.RETRY, BreakerVerdict.NEITHER),
    ],
)
def test_classify_response__follows_the_wire_contract(status, kind, verdict):
    outcome = classify_response(status, {})

    assert (outcome.kind, outcome.verdict, outcome.status_code) == (kind, verdict, status)


def test_parse_retry_after__seconds_dates_and_garbage():
    now = datetime(2025, 1, 1, tzinfo=UTC)

    assert parse_retry_after("30") == 30.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=90)), now=now) == 90.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=90)), now=now) == 0.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("10" * 20) == MAX_RETRY_AFTER_SECONDS
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after(None) is None


def _send(transport: MemoryGateTransport, receipt):
    with transport.sync_client() as client:
        return transport.send(client, str(receipt.receipt_id), receipt.wire_bytes)


def test_send__stored_then_duplicate_both_count_as_delivered(stub_memorygate, receipt_fields):
    transport = MemoryGateTransport(stub_memorygate.url, "test-key")
    receipt = build_receipt(**receipt_fields())

    first, second = _send(transport, receipt), _send(transport, receipt)

    assert (first.kind, first.status_code) == (OutcomeKind.DELIVERED, 201)
    assert (second.kind, second.status_code) == (OutcomeKind.DELIVERED, 409)
    stored = stub_memorygate.receipts()
    assert stored == {str(receipt.receipt_id): receipt.to_wire()}


def test_send__wrong_key_is_a_breaker_failure(stub_memorygate, receipt_fields):
    outcome = _send(
        MemoryGateTransport(stub_memorygate.url, "n0t-the-key"), build_receipt(**receipt_fields())
    )

    assert (outcome.kind, outcome.verdict, outcome.status_code) == (
        OutcomeKind.RETRY, BreakerVerdict.FAILURE, 401,
    )  # fmt: skip
    assert "n0t-the-key" not in outcome.error


def test_send__retry_after_is_read(stub_memorygate, receipt_fields):
    stub_memorygate.set_faults(fail_next=1, fail_status=429, retry_after=7)

    outcome = _send(
        MemoryGateTransport(stub_memorygate.url, "test-key"), build_receipt(**receipt_fields())
    )

    assert (outcome.kind, outcome.status_code, outcome.retry_after) == (OutcomeKind.RETRY, 429, 7.0)


def test_send__refused_connection_is_a_retryable_failure(dead_url, receipt_fields):
    outcome = _send(MemoryGateTransport(dead_url, "k"), build_receipt(**receipt_fields()))

    assert (outcome.kind, outcome.verdict, outcome.status_code) == (
        OutcomeKind.RETRY, BreakerVerdict.FAILURE, None,
    )  # fmt: skip
    assert outcome.error.startswith("connection error")


def test_send__dropped_connection_and_timeout_are_retryable(stub_memorygate, receipt_fields):
    transport = MemoryGateTransport(stub_memorygate.url, "test-key", timeout=0.2)
    stub_memorygate.set_faults(drop_next=1)
    dropped = _send(transport, build_receipt(**receipt_fields()))
    stub_memorygate.set_faults(latency_ms=600)
    slow = _send(transport, build_receipt(**receipt_fields()))

    assert dropped.kind is OutcomeKind.RETRY and dropped.verdict is BreakerVerdict.FAILURE
    assert slow.kind is OutcomeKind.RETRY and slow.error.startswith("timeout")


def test_asend__posts_the_same_bytes_with_the_idempotency_key(stub_memorygate, receipt_fields):
    from asgiref.sync import async_to_sync

    transport = MemoryGateTransport(stub_memorygate.url, "test-key")
    receipt = build_receipt(**receipt_fields())

    async def go():
        async with transport.async_client() as client:
            return await transport.asend(client, str(receipt.receipt_id), receipt.wire_bytes)

    outcome = async_to_sync(go)()

    assert outcome.delivered
    assert list(stub_memorygate.receipts()) == [str(receipt.receipt_id)]


def test_transport__never_shows_its_key():
    transport = MemoryGateTransport("http://mg.invalid", "s3cret-key")

    assert "s3cret" not in repr(transport)


def test_transport__mock_transport_replaces_the_network():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(201)

    transport = MemoryGateTransport(
        "http://mg.invalid", "k", transport=httpx.MockTransport(handler)
    )
    with transport.sync_client() as client:
        outcome = transport.send(client, "r", b"{}")

    assert outcome.delivered and seen == ["Bearer k"]
