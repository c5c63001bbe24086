"""The durable buffer: ``BufferedReceipt`` rows stored, claimed under a lease, and settled.

Claim
    One short transaction selects up to ``batch_size`` due rows (pending and due, or in flight
    under an expired lease) and marks them ``in_flight`` with a fresh ``lease_token`` and
    ``lease_expires_at``. On PostgreSQL the select is ``FOR UPDATE SKIP LOCKED``, so concurrent
    drainers take disjoint rows without waiting on each other. On SQLite the settings open every
    transaction with ``BEGIN IMMEDIATE``, which takes the database's write lock first, so claims
    run one after the other. On every backend the UPDATE repeats the "due" condition, so a row that
    another drainer claimed in between is not taken twice even without those locks; when the
    UPDATE touches fewer rows than were selected, the claim is read back by its token.

Settle
    Every write after the claim carries ``WHERE lease_token = <this claim's token>``: a drainer
    whose lease expired and whose rows were re-claimed by another cannot overwrite them. Results
    are written in bulk, one UPDATE per outcome class (delivered, retry, dead, released), with
    per-row values (next attempt, error) as ``CASE`` expressions, in chunks that stay below
    SQLite's parameter limit. The whole settlement is one short transaction.

No transaction is ever open while the caller talks to the network: ``claim`` and ``settle`` each
commit before returning.
"""

from __future__ import annotations

import enum
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connections, router, transaction
from django.db.models import Case, DateTimeField, F, QuerySet, TextField, Value, When
from django.utils import timezone

from resilience.models import BufferedReceipt, ReceiptStatus
from resilience.receipts.schema import Receipt

# Ids per UPDATE: keeps ``IN (...)`` plus the CASE parameters far below SQLite's limit.
CHUNK = 250


@dataclass(frozen=True, slots=True)
class ClaimedReceipt:
    id: int
    receipt_id: str
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True, slots=True)
class Claim:
    """Rows held by one drainer until ``expires_at``; writes back only with ``token``."""

    token: uuid.UUID
    expires_at: datetime
    receipts: tuple[ClaimedReceipt, ...]


class Settle(enum.StrEnum):
    DELIVERED = "delivered"  # stored by MemoryGate (or already was): attempts + 1
    RETRY = "retry"  # sent and failed for now: attempts + 1, pending at next_attempt_at
    DEAD = "dead"  # refused, or out of attempts: attempts + 1, dead
    RELEASE = "release"  # never sent (circuit open, shutdown): attempts unchanged, pending


@dataclass(frozen=True, slots=True)
class Settlement:
    """What became of one claimed row. ``error`` empty keeps the row's previous ``last_error``."""

    id: int
    result: Settle
    next_attempt_at: datetime | None = None
    error: str = ""


def _db() -> str:
    return router.db_for_write(BufferedReceipt)


def store(
    receipt: Receipt,
    *,
    status: ReceiptStatus,
    attempts: int,
    next_attempt_at: datetime,
    last_error: str,
) -> BufferedReceipt:
    """Write one receipt (``pending`` or ``dead``) with its exact wire body. Errors propagate."""
    return BufferedReceipt.objects.create(
        **_row(receipt, status, attempts, next_attempt_at, last_error)
    )


async def astore(
    receipt: Receipt,
    *,
    status: ReceiptStatus,
    attempts: int,
    next_attempt_at: datetime,
    last_error: str,
) -> BufferedReceipt:
    return await BufferedReceipt.objects.acreate(
        **_row(receipt, status, attempts, next_attempt_at, last_error)
    )


def _row(
    receipt: Receipt, status: str, attempts: int, next_attempt_at: datetime, last_error: str
) -> dict[str, Any]:
    return {
        "receipt_id": receipt.receipt_id,
        "tenant_id": receipt.tenant_id,
        "receipt_type": receipt.receipt_type,
        "task_id": receipt.task_id,
        "lease_id": receipt.lease_id,
        "payload": receipt.to_wire(),
        "status": status,
        "attempts": attempts,
        "next_attempt_at": next_attempt_at,
        "last_error": last_error,
        "created_at": receipt.created_at,
        "delivered_at": None,
    }


def claim(batch_size: int, lease_seconds: float, now: datetime | None = None) -> Claim:
    """Take up to ``batch_size`` due rows for ``lease_seconds`` (see the module docstring)."""
    now = now or timezone.now()
    token = uuid.uuid4()
    expires_at = now + timedelta(seconds=lease_seconds)
    alias = _db()
    with transaction.atomic(using=alias):
        due = BufferedReceipt.objects.using(alias).due(now).order_by("next_attempt_at", "id")
        if connections[alias].features.has_select_for_update_skip_locked:
            due = due.select_for_update(skip_locked=True)
        rows = list(due.values_list("id", "receipt_id", "payload", "attempts")[:batch_size])
        if not rows:
            return Claim(token, expires_at, ())
        ids = [row[0] for row in rows]
        taken = (
            BufferedReceipt.objects.using(alias)
            .due(now)
            .filter(id__in=ids)
            .update(
                status=ReceiptStatus.IN_FLIGHT,
                lease_token=token,
                lease_expires_at=expires_at,
                updated_at=now,
            )
        )
        if taken != len(rows):
            rows = list(
                BufferedReceipt.objects.using(alias)
                .filter(lease_token=token)
                .values_list("id", "receipt_id", "payload", "attempts")
            )
    receipts = tuple(
        ClaimedReceipt(id=pk, receipt_id=str(rid), payload=payload, attempts=attempts)
        for pk, rid, payload, attempts in rows
    )
    return Claim(token, expires_at, receipts)


def settle(
    claim: Claim, settlements: Sequence[Settlement], now: datetime | None = None
) -> dict[Settle, int]:
    """Write the results of a claim back, guarded by its token; returns rows written per class.

    A count lower than the settlements given means those rows' lease was lost to another drainer.
    """
    now = now or timezone.now()
    by_class: dict[Settle, list[Settlement]] = defaultdict(list)
    for settlement in settlements:
        by_class[settlement.result].append(settlement)
    alias = _db()
    written = dict.fromkeys(Settle, 0)
    mine = BufferedReceipt.objects.using(alias).filter(lease_token=claim.token)
    lease_cleared = {"lease_token": None, "lease_expires_at": None, "updated_at": now}
    with transaction.atomic(using=alias):
        for chunk in _chunks(by_class[Settle.DELIVERED]):
            written[Settle.DELIVERED] += mine.filter(id__in=[s.id for s in chunk]).update(
                status=ReceiptStatus.DELIVERED,
                attempts=F("attempts") + 1,
                delivered_at=now,
                last_error="",
                **lease_cleared,
            )
        for chunk in _chunks(by_class[Settle.RETRY]):
            written[Settle.RETRY] += mine.filter(id__in=[s.id for s in chunk]).update(
                status=ReceiptStatus.PENDING,
                attempts=F("attempts") + 1,
                next_attempt_at=_per_row_time(chunk, now),
                last_error=_per_row_error(chunk),
                **lease_cleared,
            )
        for chunk in _chunks(by_class[Settle.DEAD]):
            written[Settle.DEAD] += mine.filter(id__in=[s.id for s in chunk]).update(
                status=ReceiptStatus.DEAD,
                attempts=F("attempts") + 1,
                last_error=_per_row_error(chunk),
                **lease_cleared,
            )
        for chunk in _chunks(by_class[Settle.RELEASE]):
            written[Settle.RELEASE] += mine.filter(id__in=[s.id for s in chunk]).update(
                status=ReceiptStatus.PENDING,
                next_attempt_at=_per_row_time(chunk, now),
                last_error=_per_row_error(chunk),
                **lease_cleared,
            )
    return written


def release(claim: Claim, ids: Iterable[int], now: datetime | None = None) -> int:
    """Give rows of a claim back (pending, due now, attempts unchanged)."""
    settlements = [Settlement(pk, Settle.RELEASE) for pk in ids]
    return settle(claim, settlements, now)[Settle.RELEASE]


def _chunks(items: Sequence[Settlement]) -> Iterator[Sequence[Settlement]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _per_row_time(chunk: Sequence[Settlement], now: datetime) -> Any:
    times = {s.id: s.next_attempt_at or now for s in chunk}
    distinct = set(times.values())
    if len(distinct) == 1:
        return Value(distinct.pop(), output_field=DateTimeField())
    return Case(
        *(
            When(id=pk, then=Value(when, output_field=DateTimeField()))
            for pk, when in times.items()
        ),
        default=Value(now, output_field=DateTimeField()),
        output_field=DateTimeField(),
    )


def _per_row_error(chunk: Sequence[Settlement]) -> Any:
    """One WHEN per distinct error (a failing MemoryGate usually gives every row the same one)."""
    ids_by_error: dict[str, list[int]] = defaultdict(list)
    for s in chunk:
        if s.error:
            ids_by_error[s.error].append(s.id)
    if not ids_by_error:
        return F("last_error")
    return Case(
        *(
            When(id__in=ids, then=Value(error, output_field=TextField()))
            for error, ids in ids_by_error.items()
        ),
        default=F("last_error"),
        output_field=TextField(),
    )


def due_count(now: datetime | None = None) -> int:
    return BufferedReceipt.objects.using(_db()).due(now).count()


def retry_now(queryset: QuerySet[BufferedReceipt], now: datetime | None = None) -> int:
    """Pending and dead rows of ``queryset`` become pending and due now; others are untouched."""
    now = now or timezone.now()
    return queryset.filter(status__in=(ReceiptStatus.PENDING, ReceiptStatus.DEAD)).update(
        status=ReceiptStatus.PENDING, next_attempt_at=now, updated_at=now
    )


def requeue_dead(
    queryset: QuerySet[BufferedReceipt] | None = None, now: datetime | None = None
) -> int:
    """Dead rows become pending, due now, with a fresh attempt budget."""
    now = now or timezone.now()
    queryset = BufferedReceipt.objects.all() if queryset is None else queryset
    return queryset.filter(status=ReceiptStatus.DEAD).update(
        status=ReceiptStatus.PENDING, attempts=0, next_attempt_at=now, updated_at=now
    )


def purge_delivered_before(cutoff: datetime) -> int:
    """Delete delivered rows delivered before ``cutoff``."""
    deleted, _ = BufferedReceipt.objects.filter(
        status=ReceiptStatus.DELIVERED, delivered_at__lt=cutoff
    ).delete()
    return deleted


def delivered_before(cutoff: datetime) -> int:
    """How many rows ``purge_delivered_before(cutoff)`` would delete."""
    return BufferedReceipt.objects.filter(
        status=ReceiptStatus.DELIVERED, delivered_at__lt=cutoff
    ).count()
