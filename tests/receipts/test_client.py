"""``MemoryGateClient``: emit = breaker + transport, else buffer. Real HTTP to the stub."""

import asyncio
import logging
import os
import re
import time
import uuid

import pytest
from asgiref.sync import async_to_sync
from django.db import OperationalError, connection
from django.utils import timezone

from resilience.breaker import get_breaker
from resilience.integrations import MemoryGateClient, get_memorygate_client
from resilience.integrations.memorygate_client import CANCELLED_REASON
from resilience.models import BufferedReceipt, ReceiptStatus
from resilience.receipts.drain import drain
from resilience.receipts.schema import MAX_BODY_DEPTH
from resilience.signals import receipt_buffered, receipt_dead_lettered, receipt_delivered
from tests.conftest import point_at
from tests.receipts.conftest import set_breaker_policy


def emit(**fields):
    return get_memorygate_client().emit_receipt_sync(**fields)


def aemit(**fields):
    return async_to_sync(get_memorygate_client().emit_receipt)(**fields)


@pytest.mark.django_db
@pytest.mark.parametrize("call", [emit, aemit], ids=["sync", "async"])
def test_emit_receipt__delivered_without_a_database_write(
    memorygate, receipt_fields, django_assert_num_queries, call
):
    get_breaker("memorygate")  # the policy row is read once per process, not per call

    with django_assert_num_queries(0):
        result = call(**receipt_fields())

    assert result == {"status": "delivered", "receipt_id": result["receipt_id"]}
    stored = memorygate.receipts()[result["receipt_id"]]
    assert stored["receipt_type"] == "task.assigned"
    assert BufferedReceipt.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("call", [emit, aemit], ids=["sync", "async"])
def test_emit_receipt__transient_failure_is_buffered_honouring_retry_after(
    memorygate, receipt_fields, call
):
    memorygate.set_faults(fail_next=1, fail_status=503, retry_after=30)
    fields = receipt_fields(body={"step": 3})

    result = call(**fields)

    assert result["status"] == "buffered"
    assert result["reason"].startswith("HTTP 503")
    row = BufferedReceipt.objects.get()
    assert str(row.receipt_id) == result["receipt_id"]
    assert (row.status, row.attempts, row.receipt_type) == (
        ReceiptStatus.PENDING,
        1,
        "task.assigned",
    )
    assert row.payload["body"] == {"step": 3}
    assert row.payload["receipt_id"] == result["receipt_id"]
    assert 25 < (row.next_attempt_at - row.created_at).total_seconds() <= 31
    assert memorygate.stats()["stored"] == 0


@pytest.mark.django_db
def test_emit_receipt__refusal_is_stored_dead_and_reported_rejected(memorygate, receipt_fields):
    memorygate.set_faults(fail_next=1, fail_status=422)

    result = emit(**receipt_fields())

    assert result["status"] == "rejected"
    assert "422" in result["reason"]
    row = BufferedReceipt.objects.get()
    assert row.status == ReceiptStatus.DEAD
    assert row.last_error.startswith("refused by MemoryGate: HTTP 422")


@pytest.mark.django_db
def test_emit_receipt__401_buffers_and_opens_the_circuit(memorygate, settings, receipt_fields):
    point_at(settings, memorygate.url, api_key="not-the-key")
    threshold = get_breaker("memorygate").policy.failure_threshold

    results = [emit(**receipt_fields()) for _ in range(threshold + 3)]

    assert {r["status"] for r in results} == {"buffered"}
    assert all(r["reason"].startswith("HTTP 401") for r in results[:threshold])
    assert all(r["reason"].startswith("circuit open") for r in results[threshold:])
    assert memorygate.stats()["received"] == threshold  # the open circuit sent nothing more
    stats = get_memorygate_client().get_circuit_stats()
    assert stats["state"] == "open"
    assert stats["total_rejections"] == 3
    assert "not-the-key" not in str(stats)
    rows = BufferedReceipt.objects.filter(status=ReceiptStatus.PENDING)
    assert rows.count() == threshold + 3
    # A rejection by the breaker is no attempt; it waits for the circuit's retry time.
    skipped = rows.filter(attempts=0)
    assert skipped.count() == 3
    assert all((r.next_attempt_at - r.created_at).total_seconds() > 30 for r in skipped)


@pytest.mark.django_db
def test_emit_receipt__memorygate_down_buffers(memorygate_down, receipt_fields):
    result = emit(**receipt_fields())

    assert result["status"] == "buffered"
    assert result["reason"].startswith("connection error")
    assert BufferedReceipt.objects.filter(receipt_id=result["receipt_id"]).exists()


@pytest.mark.django_db
def test_emit_receipt__unset_url_buffers_everything(settings, receipt_fields):
    point_at(settings, None)

    result = emit(**receipt_fields())

    assert result["status"] == "buffered"
    assert result["reason"] == "MEMORYGATE_URL is not set"
    assert BufferedReceipt.objects.get().attempts == 0


@pytest.mark.django_db
def test_emit_receipt__breaker_disabled_in_policy_still_falls_back(memorygate, receipt_fields):
    set_breaker_policy(enabled=False, failure_threshold=1)
    memorygate.set_faults(fail_rate=1.0)

    results = [emit(**receipt_fields()) for _ in range(4)]

    assert [r["status"] for r in results] == ["buffered"] * 4
    assert memorygate.stats()["received"] == 4  # no circuit ever opened
    assert get_memorygate_client().get_circuit_stats()["total_calls"] == 0
    assert BufferedReceipt.objects.count() == 4


@pytest.mark.django_db
@pytest.mark.parametrize("call", [emit, aemit], ids=["sync", "async"])
def test_emit_receipt__bad_input_sends_and_stores_nothing(memorygate, receipt_fields, call):
    with pytest.raises(ValueError, match=r"^from_principal\.kind:"):
        call(**receipt_fields(from_principal={"kind": "martian", "id": "x"}))
    with pytest.raises(TypeError):
        call(**receipt_fields(), priority="high")

    assert memorygate.stats()["received"] == 0
    assert BufferedReceipt.objects.count() == 0


@pytest.mark.django_db
def test_emit_receipt__a_failed_buffer_write_is_raised_not_reported(
    memorygate_down, receipt_fields
):
    def refuse_receipt_inserts(execute, sql, params, many, context):
        if sql.startswith("INSERT") and BufferedReceipt._meta.db_table in sql:
            raise OperationalError("disk full (injected)")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(refuse_receipt_inserts), pytest.raises(OperationalError):
        emit(**receipt_fields())


@pytest.mark.django_db
def test_emit_receipt__sends_signals(memorygate, receipt_fields):
    seen = []

    def record(signal_name):
        return lambda sender, **kwargs: seen.append((signal_name, kwargs))

    handlers = {
        receipt_delivered: record("delivered"),
        receipt_buffered: record("buffered"),
        receipt_dead_lettered: record("dead"),
    }
    for signal, handler in handlers.items():
        signal.connect(handler)
    try:
        delivered = emit(**receipt_fields())
        memorygate.set_faults(fail_next=1)
        buffered = emit(**receipt_fields())
        memorygate.set_faults(fail_next=1, fail_status=400)
        rejected = emit(**receipt_fields())
    finally:
        for signal, handler in handlers.items():
            signal.disconnect(handler)

    assert [(name, kw["receipt_id"]) for name, kw in seen] == [
        ("delivered", delivered["receipt_id"]),
        ("buffered", buffered["receipt_id"]),
        ("dead", rejected["receipt_id"]),
    ]
    assert seen[0][1]["buffered"] is False


def test_emit_receipt_sync__refuses_to_block_a_running_event_loop(receipt_fields):
    client = MemoryGateClient(None)

    async def misuse():
        client.emit_receipt_sync(**receipt_fields())

    with pytest.raises(RuntimeError, match="await emit_receipt"):
        asyncio.run(misuse())


def test_get_memorygate_client__one_per_process_rebuilt_on_setting_change(settings):
    point_at(settings, "http://mg-one.invalid", api_key="k1")
    first = get_memorygate_client()

    assert get_memorygate_client() is first
    assert "mg-one.invalid" in repr(first)

    point_at(settings, "http://mg-two.invalid", api_key="k2")
    second = get_memorygate_client()

    assert second is not first
    assert "mg-two.invalid" in repr(second)
    assert "k2" not in repr(second)


@pytest.mark.django_db
def test_emit_receipt__one_async_pool_per_event_loop(memorygate, receipt_fields):
    client = MemoryGateClient(memorygate.url, "test-key")
    get_breaker("memorygate")  # loaded here, not in asgiref's executor thread (its connection)

    async def twice():
        first = await client.emit_receipt(**receipt_fields())
        pool = await client._aclient()
        second = await client.emit_receipt(**receipt_fields())
        assert await client._aclient() is pool
        await client.aclose()
        assert pool.is_closed
        return first, second

    loop = asyncio.new_event_loop()
    try:
        results = loop.run_until_complete(twice())
    finally:
        loop.close()

    assert [r["status"] for r in results] == ["delivered", "delivered"]
    assert memorygate.stats()["stored"] == 2


@pytest.mark.django_db
def test_reset_circuit__closes_an_open_circuit(memorygate, receipt_fields):
    client = get_memorygate_client()
    memorygate.set_faults(fail_rate=1.0)
    threshold = get_breaker("memorygate").policy.failure_threshold
    for _ in range(threshold):
        client.emit_receipt_sync(**receipt_fields())
    assert client.get_circuit_stats()["state"] == "open"
    memorygate.set_faults(fail_rate=0.0)

    async_to_sync(client.reset_circuit)()

    assert client.get_circuit_stats()["state"] == "closed"
    assert client.emit_receipt_sync(**receipt_fields())["status"] == "delivered"


@pytest.mark.django_db
def test_emit_receipt__uuid_strings_are_accepted_and_sent_canonical(memorygate, receipt_fields):
    tenant, task = uuid.uuid4(), uuid.uuid4()

    result = emit(**receipt_fields(tenant_id=str(tenant).upper(), task_id=task.hex))

    stored = memorygate.receipts()[result["receipt_id"]]
    assert (stored["tenant_id"], stored["task_id"]) == (str(tenant), str(task))


def _open_probe_circuit() -> None:
    """Leave the ``memorygate`` circuit HALF_OPEN-ready with one probe slot."""
    set_breaker_policy(failure_threshold=1, timeout_seconds=1, half_open_max_calls=1)
    breaker = get_breaker("memorygate")
    breaker.acquire().failure("opened by the test")
    assert breaker.stats()["state"] == "open"
    time.sleep(1.05)  # timeout_seconds: the next acquire is the probe


@pytest.mark.django_db
def test_emit_receipt__cancelled_mid_send_keeps_the_receipt_and_frees_the_probe(
    memorygate, settings, receipt_fields
):
    point_at(settings, memorygate.url, memorygate.api_key, MEMORYGATE_TIMEOUT_SECONDS=10)
    _open_probe_circuit()
    memorygate.set_faults(latency_ms=5000)  # stored at once, answered late
    client = get_memorygate_client()

    async def cancel_while_sending():
        # What Django's ASGI handler does when the client disconnects during the view.
        emit_task = asyncio.ensure_future(client.emit_receipt(**receipt_fields()))
        while not (await asyncio.to_thread(memorygate.stats))["received"]:
            await asyncio.sleep(0.01)
        emit_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await emit_task

    async_to_sync(cancel_while_sending)()

    row = BufferedReceipt.objects.get()
    assert (row.status, row.attempts) == (ReceiptStatus.PENDING, 0)
    assert row.next_attempt_at <= timezone.now()
    assert row.last_error == CANCELLED_REASON
    assert set(memorygate.receipts()) == {str(row.receipt_id)}  # the same idempotency key
    assert client.get_circuit_stats()["probes_in_flight"] == 0
    memorygate.set_faults(latency_ms=0)
    assert emit(**receipt_fields())["status"] == "delivered"  # the probe slot was given back
    assert drain().delivered == 1
    assert memorygate.stats()["duplicates"] == 1  # MemoryGate kept it once


@pytest.mark.django_db
@pytest.mark.parametrize("call", [emit, aemit], ids=["sync", "async"])
def test_emit_receipt__an_unexpected_error_buffers_and_frees_the_probe(
    memorygate, receipt_fields, monkeypatch, call
):
    _open_probe_circuit()
    transport = get_memorygate_client()._transport

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the transport")

    async def abroken(*args, **kwargs):
        broken()

    monkeypatch.setattr(transport, "send", broken)
    monkeypatch.setattr(transport, "asend", abroken)

    result = call(**receipt_fields())

    assert result["status"] == "buffered"
    assert result["reason"] == "unexpected error: RuntimeError"
    assert BufferedReceipt.objects.get().status == ReceiptStatus.PENDING
    assert get_memorygate_client().get_circuit_stats()["probes_in_flight"] == 0
    monkeypatch.undo()
    assert call(**receipt_fields())["status"] == "delivered"  # the slot is free for a probe


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.django_db
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds through /proc")
def test_emit_receipt__fresh_event_loops_leave_no_pool_open(memorygate, receipt_fields):
    client = MemoryGateClient(memorygate.url, memorygate.api_key)
    get_breaker("memorygate")
    # async_to_sync runs each call on a new loop, as Django does for an async view under WSGI.
    aemit_fresh = async_to_sync(client.emit_receipt)
    aemit_fresh(**receipt_fields())
    before = _open_fds()

    results = [aemit_fresh(**receipt_fields()) for _ in range(40)]

    assert {r["status"] for r in results} == {"delivered"}
    assert _open_fds() - before <= 1
    assert client._async_pools == {}


@pytest.mark.django_db
def test_emit_receipt__pools_of_loops_closed_without_shutdown_are_dropped(
    memorygate, receipt_fields
):
    client = MemoryGateClient(memorygate.url, memorygate.api_key)
    get_breaker("memorygate")
    loops = []
    for _ in range(3):
        loop = asyncio.new_event_loop()
        loops.append(loop)
        try:
            result = loop.run_until_complete(client.emit_receipt(**receipt_fields()))
        finally:
            loop.close()
        assert result["status"] == "delivered"

    assert list(client._async_pools) == [loops[-1]]


@pytest.mark.django_db
@pytest.mark.parametrize("call", [emit, aemit], ids=["sync", "async"])
def test_emit_receipt__an_echoed_api_key_reaches_no_sink(
    echoing_memorygate, settings, receipt_fields, caplog, call
):
    point_at(settings, echoing_memorygate, api_key="SEKRET-KEY-123")

    with caplog.at_level(logging.WARNING, logger="resilience"):
        result = call(**receipt_fields())

    row = BufferedReceipt.objects.get()
    assert result["status"] == "rejected"
    assert "refused a request sent with Authorization: Bearer [redacted]" in result["reason"]
    assert '"api_key": "[redacted]"' in result["reason"]
    sinks = {"reason": result["reason"], "last_error": row.last_error, "log": caplog.text}
    assert all(sinks.values())
    assert {name: "SEKRET" in text for name, text in sinks.items()} == dict.fromkeys(sinks, False)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"body": {"note": "a\x00b"}}, "body"),
        ({"from_principal": {"kind": "agent", "id": "a\x00"}}, "from_principal.id"),
        ({"to_principal": {"kind": ["agent"], "id": "a"}}, "to_principal.kind"),
    ],
)
def test_emit_receipt__unstorable_input_is_refused_before_anything_is_sent(
    memorygate, receipt_fields, fields, field
):
    memorygate.set_faults(fail_rate=1.0)  # a send would end in a buffer write

    with pytest.raises(ValueError, match=f"^{re.escape(field)}:"):
        emit(**receipt_fields(**fields))

    assert memorygate.stats()["received"] == 0
    assert BufferedReceipt.objects.count() == 0


@pytest.mark.django_db
def test_emit_receipt__the_deepest_allowed_body_is_buffered_then_delivered(
    memorygate, receipt_fields
):
    body: dict = {"emoji": "\U0001f600"}
    for _ in range(MAX_BODY_DEPTH - 1):
        body = {"a": body}
    memorygate.set_faults(fail_next=1)

    result = emit(**receipt_fields(body=body))

    assert result["status"] == "buffered"
    assert BufferedReceipt.objects.get().payload["body"] == body
    assert drain().delivered == 1
    assert memorygate.receipts()[result["receipt_id"]]["body"] == body
