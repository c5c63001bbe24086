"""``receipts.drain`` and ``receipts.buffer`` against real HTTP (the stub) and a real database."""

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from resilience.breaker import get_breaker
from resilience.integrations import get_memorygate_client
from resilience.models import BufferedReceipt, ReceiptStatus
from resilience.receipts import buffer
from resilience.receipts.backoff import retry_delay
from resilience.receipts.buffer import Settle, Settlement
from resilience.receipts.drain import Drainer, DrainOptions, drain
from tests.conftest import point_at
from tests.receipts.conftest import set_breaker_policy

pytestmark = pytest.mark.django_db


def statuses() -> dict[str, int]:
    counts = dict.fromkeys(ReceiptStatus.values, 0)
    for row in BufferedReceipt.objects.values_list("status", flat=True):
        counts[row] += 1
    return counts


def test_drain__delivers_each_due_receipt_once(memorygate, buffered):
    rows = buffered(30)

    report = drain(DrainOptions(batch_size=8, concurrency=4))

    assert (report.claimed, report.delivered, report.batches) == (30, 30, 4)
    assert report.all_delivered and report.remaining_due == 0
    stats = memorygate.stats()
    assert (stats["stored"], stats["duplicates"], stats["received"]) == (30, 0, 30)
    assert set(memorygate.receipts()) == {str(r.receipt_id) for r in rows}
    delivered = BufferedReceipt.objects.filter(status=ReceiptStatus.DELIVERED)
    assert delivered.count() == 30
    assert not delivered.filter(delivered_at=None).exists()
    assert not delivered.exclude(lease_token=None).exists()
    assert set(delivered.values_list("attempts", flat=True)) == {1}


def test_drain__sends_the_stored_payload_with_its_idempotency_key(memorygate, buffered):
    (row,) = buffered(1)

    drain()

    assert memorygate.receipts()[str(row.receipt_id)] == row.payload


def test_drain__settles_a_batch_in_a_few_queries(memorygate, buffered):
    buffered(100)
    get_breaker("memorygate")

    with CaptureQueriesContext(connection) as queries:
        report = drain(DrainOptions(batch_size=100, concurrency=10))

    assert report.delivered == 100
    # claim (select + update), settle (one update), an empty claim, the final count, and the
    # savepoints/transactions around them: nothing per row.
    assert len(queries) <= 12, [q["sql"][:80] for q in queries]


def test_drain__outage_of_1000_emits_then_recovery_delivers_each_once(memorygate, receipt_fields):
    set_breaker_policy(timeout_seconds=1)
    memorygate.set_faults(fail_rate=1.0)
    client = get_memorygate_client()

    results = [client.emit_receipt_sync(**receipt_fields(body={"i": i})) for i in range(1000)]

    assert {r["status"] for r in results} == {"buffered"}
    assert BufferedReceipt.objects.filter(status=ReceiptStatus.PENDING).count() == 1000
    assert memorygate.stats()["stored"] == 0
    memorygate.set_faults(fail_rate=0.0)
    time.sleep(1.1)  # the circuit's timeout, and the skipped receipts' retry time, pass

    report = drain(DrainOptions(batch_size=200, concurrency=16))

    assert report.all_delivered, report
    stats = memorygate.stats()
    assert (stats["stored"], stats["duplicates"]) == (1000, 0)
    assert set(memorygate.receipts()) == {r["receipt_id"] for r in results}
    assert statuses()[ReceiptStatus.DELIVERED] == 1000
    assert get_breaker("memorygate").stats()["state"] == "closed"


def test_drain__refusal_dead_letters(memorygate, buffered):
    buffered(3)
    memorygate.set_faults(fail_next=1, fail_status=422)

    report = drain(DrainOptions(concurrency=1))

    assert (report.delivered, report.dead) == (2, 1)
    assert not report.all_delivered
    dead = BufferedReceipt.objects.get(status=ReceiptStatus.DEAD)
    assert dead.last_error.startswith("refused by MemoryGate: HTTP 422")
    assert dead.attempts == 1


def test_drain__retry_after_is_honoured(memorygate, buffered):
    buffered(4)
    memorygate.set_faults(fail_next=4, fail_status=503, retry_after=120)
    before = timezone.now()

    report = drain(DrainOptions(concurrency=2))

    assert (report.failed, report.still_failing, report.delivered) == (4, 4, 0)
    rows = BufferedReceipt.objects.all()
    assert {r.status for r in rows} == {ReceiptStatus.PENDING}
    assert {r.attempts for r in rows} == {1}
    assert all(r.next_attempt_at >= before + timedelta(seconds=120) for r in rows)
    assert drain().claimed == 0  # nothing is due before Retry-After


def test_drain__401_keeps_receipts_pending_and_opens_the_breaker(memorygate, settings, buffered):
    point_at(settings, memorygate.url, api_key="not-the-key")
    buffered(12)
    threshold = get_breaker("memorygate").policy.failure_threshold

    report = drain(DrainOptions(batch_size=12, concurrency=1))

    assert report.stopped_because == "circuit open"
    assert (report.failed, report.skipped_open_circuit) == (threshold, 12 - threshold)
    assert memorygate.stats()["received"] == threshold
    assert get_breaker("memorygate").stats()["state"] == "open"
    rows = BufferedReceipt.objects.all()
    assert {r.status for r in rows} == {ReceiptStatus.PENDING}
    # A breaker rejection is not an attempt; the row waits for the circuit's retry time.
    skipped = rows.filter(attempts=0)
    assert skipped.count() == 12 - threshold
    assert all(r.next_attempt_at > timezone.now() + timedelta(seconds=30) for r in skipped)
    assert rows.filter(attempts=1).count() == threshold


def test_drain__gives_up_after_max_attempts(memorygate, buffered):
    buffered(2, attempts=2)
    memorygate.set_faults(fail_next=2, fail_status=500)

    report = drain(DrainOptions(max_attempts=3))

    assert report.dead == 2
    assert set(BufferedReceipt.objects.values_list("status", "attempts")) == {("dead", 3)}
    assert BufferedReceipt.objects.first().last_error.startswith("gave up after 3 attempts")


def test_drain__connection_refused_backs_off(memorygate_down, buffered):
    buffered(2)

    report = drain(DrainOptions(concurrency=1))

    assert report.failed == 2
    row = BufferedReceipt.objects.first()
    assert row.last_error.startswith("connection error")
    assert row.next_attempt_at > row.updated_at - timedelta(seconds=1)


def test_drain__stop_releases_claimed_rows_that_were_not_sent(memorygate, buffered):
    buffered(40)
    memorygate.set_faults(latency_ms=50)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()

    report = drain(DrainOptions(batch_size=40, concurrency=2), stop=stop)

    assert report.stopped_because == "stop requested"
    assert report.released > 0
    assert report.delivered + report.released == 40
    assert statuses()[ReceiptStatus.IN_FLIGHT] == 0
    assert memorygate.stats()["stored"] == report.delivered
    assert drain().delivered == report.released


def test_drain__unset_url_is_a_delivery_error(settings, buffered):
    from resilience.exceptions import DeliveryError

    point_at(settings, None)
    buffered(1)

    with pytest.raises(DeliveryError, match="MEMORYGATE_URL"):
        drain()
    assert statuses()[ReceiptStatus.PENDING] == 1


@pytest.mark.parametrize("option", ["batch_size", "concurrency", "max_attempts", "lease_seconds"])
@pytest.mark.parametrize("value", [0, -1, True])
def test_drain_options__non_positive_is_a_value_error_naming_it(option, value):
    with pytest.raises(ValueError, match=f"^{option}:"):
        DrainOptions(**{option: value})


def test_claim__two_claims_never_share_a_row(buffered):
    buffered(10)

    first = buffer.claim(6, lease_seconds=30)
    second = buffer.claim(6, lease_seconds=30)

    assert len(first.receipts) == 6 and len(second.receipts) == 4
    assert not {r.id for r in first.receipts} & {r.id for r in second.receipts}
    assert buffer.claim(6, lease_seconds=30).receipts == ()


def test_settle__a_lost_lease_writes_nothing(buffered):
    buffered(3)
    stale = buffer.claim(3, lease_seconds=30)
    later = timezone.now() + timedelta(seconds=31)  # the lease ran out; another drainer claims
    fresh = buffer.claim(3, lease_seconds=30, now=later)

    written = buffer.settle(stale, [Settlement(r.id, Settle.DELIVERED) for r in stale.receipts])

    assert sum(written.values()) == 0
    assert len(fresh.receipts) == 3
    assert set(BufferedReceipt.objects.values_list("status", "lease_token")) == {
        (ReceiptStatus.IN_FLIGHT, fresh.token)
    }


def test_retry_delay__full_jitter_doubles_up_to_the_cap_and_respects_retry_after():
    def top(low, high):
        return high

    assert [retry_delay(n, uniform=top) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert retry_delay(40, uniform=top) == 900.0
    assert retry_delay(1, uniform=lambda low, high: low) == 0.0
    assert retry_delay(1, 30.0, uniform=top) == 30.0


def test_drain__backoff_grows_exponentially_with_prior_attempts(memorygate, buffered):
    prior = {0: 1.0, 3: 8.0, 6: 64.0, 10: 900.0}  # attempts so far -> base * 2**n, capped at 900
    rows = {buffered(1, attempts=n)[0].pk: n for n in prior}
    memorygate.set_faults(fail_rate=1.0, fail_status=503)
    ranges: list[tuple[float, float]] = []

    def widest(low: float, high: float) -> float:
        ranges.append((low, high))
        return high

    before = timezone.now()
    report = Drainer(DrainOptions(concurrency=1), uniform=widest).run()

    assert report.failed == len(prior)
    assert sorted(ranges) == sorted((0.0, bound) for bound in prior.values())  # full jitter
    for row in BufferedReceipt.objects.all():
        bound = timedelta(seconds=prior[rows[row.pk]])
        assert (row.status, row.attempts) == (ReceiptStatus.PENDING, rows[row.pk] + 1)
        assert before + bound <= row.next_attempt_at <= timezone.now() + bound


def test_drain__backoff_jitter_stays_within_the_bound(memorygate, buffered):
    buffered(20, attempts=6)
    memorygate.set_faults(fail_rate=1.0, fail_status=503)
    set_breaker_policy(failure_threshold=100)
    before = timezone.now()

    drain(DrainOptions(concurrency=4))

    delays = [
        (row.next_attempt_at - before).total_seconds() for row in BufferedReceipt.objects.all()
    ]
    assert all(0 <= d <= 64 + 1 for d in delays)
    # Twenty draws from [0, 64] all below 32 would be a one-in-a-million fluke: the exponent is 6.
    assert max(delays) > 32


def test_drain__a_breaker_rejection_keeps_the_last_real_error(memorygate, buffered):
    buffered(3, attempts=2, last_error="HTTP 401: missing or wrong bearer token")
    set_breaker_policy(override="force_open")

    report = drain(DrainOptions(concurrency=1))

    assert report.stopped_because == "circuit open"
    assert (report.skipped_open_circuit, report.still_failing) == (3, 3)
    assert memorygate.stats()["received"] == 0
    assert set(BufferedReceipt.objects.values_list("status", "attempts", "last_error")) == {
        (ReceiptStatus.PENDING, 2, "HTTP 401: missing or wrong bearer token")
    }


def test_drain__an_echoed_api_key_is_not_stored(echoing_memorygate, settings, buffered):
    point_at(settings, echoing_memorygate, api_key="SEKRET-KEY-123")
    buffered(1)

    report = drain()

    row = BufferedReceipt.objects.get()
    assert report.dead == 1
    assert row.last_error.startswith("refused by MemoryGate: HTTP 422")
    assert "Bearer [redacted]" in row.last_error
    assert "SEKRET" not in row.last_error


@pytest.mark.django_db(transaction=True)
def test_drain__loop_replaces_a_broken_database_connection_between_batches(memorygate, buffered):
    buffered(9)
    stop = threading.Event()
    breakages = []

    def break_the_connection(report):
        # What a database restart leaves behind: Django's handle on a dead connection.
        connection.ensure_connection()
        connection.connection.close()
        breakages.append(report.batches)
        if report.delivered == 9:
            stop.set()

    report = drain(
        DrainOptions(batch_size=3, loop=True), stop=stop, on_progress=break_the_connection
    )

    assert breakages == [1, 2, 3]
    assert report.delivered == 9
    assert statuses()[ReceiptStatus.DELIVERED] == 9


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("batch_size", 10_001),
        ("concurrency", 1_001),
        ("max_attempts", 1_001),
        ("lease_seconds", 86_401),
        ("lease_seconds", float("inf")),
        ("max_seconds", 1e12),
        ("idle_seconds", float("nan")),
    ],
)
def test_drain_options__over_the_limit_is_a_value_error_naming_it(option, value):
    with pytest.raises(ValueError, match=f"^{option}:"):
        DrainOptions(**{option: value})
