"""Deliver buffered receipts: claim a batch, send it concurrently, settle it in bulk, repeat.

Algorithm (one ``Drainer.run``):

1. Claim up to ``batch_size`` due rows under a lease (``buffer.claim``: one short transaction,
   ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite).
2. Send them on one ``httpx.AsyncClient`` with at most ``concurrency`` requests in flight, each
   through the ``memorygate`` breaker and ``MemoryGateTransport`` (one POST of the stored payload
   as is, ``Idempotency-Key: <receipt_id>``). No transaction is open meanwhile.
3. Settle every row at once (``buffer.settle``: one UPDATE per outcome class, each guarded by the
   claim's lease token):

   * delivered (2xx or 409): ``delivered``;
   * refused (400, 404, 413, 422), or a retryable failure on the ``max_attempts``-th attempt:
     ``dead``;
   * retryable failure: ``pending`` again, after ``backoff.retry_delay`` (exponential, full
     jitter, at least ``Retry-After``);
   * not sent because the breaker refused it: ``pending`` at the circuit's retry time with
     ``attempts`` and ``last_error`` unchanged, since a breaker rejection is not an attempt and
     staff need the error that opened the circuit (a 401, a 503), not "circuit open";
   * not sent because the drainer is stopping, or because its lease is about to run out (a row
     sent after its lease expired could be sent by another drainer too): ``pending``, due now.

   Then ``receipt_batch_drained`` is sent with the batch's counts and duration (for metrics).

4. Stop claiming once the breaker refused a call: a one-shot run ends there unless the circuit
   reopens for probes within ``SHORT_CIRCUIT_WAIT`` seconds (a HALF_OPEN circuit with every probe
   slot taken), in which case it waits; ``--loop`` always waits for the circuit. Also stop on
   ``max_seconds``, on a stop request (SIGTERM/SIGINT in the command), or when nothing is due.

Guarantees: at least once. Several drainers never hold the same row at once; a row is sent again
only if its drainer's lease expired (the drainer was killed or stalled), and then MemoryGate drops
the duplicate by its idempotency key. A drainer killed at any point loses nothing: its rows stay
``in_flight`` until their lease expires and then count as due.

The drain runs its own event loop in the calling thread and uses the ORM only between batches,
while no loop is running, so it is safe from management commands, cron and tests alike.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import timedelta

import httpx
from django.db import close_old_connections
from django.utils import timezone

from resilience import signals
from resilience.breaker import get_breaker
from resilience.exceptions import CircuitOpen
from resilience.receipts import buffer
from resilience.receipts.backoff import retry_delay
from resilience.receipts.buffer import Claim, ClaimedReceipt, Settle, Settlement
from resilience.receipts.schema import encode_payload
from resilience.receipts.transport import (
    DeliveryOutcome,
    MemoryGateTransport,
    OutcomeKind,
    areport,
    transport_from_settings,
)

BREAKER_NAME = "memorygate"
# DrainReport.stopped_because when ``stop`` was set (SIGTERM/SIGINT in the command).
STOP_REQUESTED = "stop requested"
# A one-shot run waits this long for a circuit rather than give up (see step 4).
SHORT_CIRCUIT_WAIT = 2.0
# Upper bounds of the options: far beyond any sane use, and small enough that every time computed
# from them (a lease's expiry, a deadline) stays a valid datetime.
MAX_OPTION_VALUES: dict[str, float] = {
    "batch_size": 10_000,
    "concurrency": 1_000,
    "max_attempts": 1_000,
    "lease_seconds": 86_400.0,  # one day
    "max_seconds": 3650 * 86_400.0,  # ten years
    "idle_seconds": 3_600.0,
}


@dataclass(frozen=True)
class DrainOptions:
    """How one drain run behaves. Every number must be positive and at most its bound in
    ``MAX_OPTION_VALUES`` (``ValueError`` names the option otherwise)."""

    batch_size: int = 100
    concurrency: int = 16
    max_attempts: int = 12
    lease_seconds: float = 60.0
    loop: bool = False
    max_seconds: float | None = None
    # --loop: how long to wait before looking again when nothing is due.
    idle_seconds: float = 1.0

    def __post_init__(self) -> None:
        for option in fields(self):
            value = getattr(self, option.name)
            if option.name == "loop" or (option.name == "max_seconds" and value is None):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{option.name}: must be a positive number, not {value!r}.")
            limit = MAX_OPTION_VALUES[option.name]
            if not value <= limit:
                raise ValueError(f"{option.name}: {value!r} is over the limit of {limit:.0f}.")


@dataclass(frozen=True)
class DrainReport:
    """What a drain run did.

    ``failed`` and ``skipped_open_circuit`` count events (a row may fail, then be delivered later
    in the same run); ``still_failing`` counts rows this run left pending after a failure or an
    open circuit, ``dead`` rows it dead-lettered.
    """

    claimed: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    skipped_open_circuit: int = 0
    released: int = 0
    lost_lease: int = 0
    still_failing: int = 0
    remaining_due: int = 0
    batches: int = 0
    elapsed: float = 0.0
    stopped_because: str = "nothing due"

    @property
    def all_delivered(self) -> bool:
        """Every row this run tried was delivered and nothing due is left."""
        return not (self.still_failing or self.dead) and self.remaining_due == 0


@dataclass
class _Totals:
    claimed: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    skipped_open_circuit: int = 0
    released: int = 0
    lost_lease: int = 0
    batches: int = 0
    # Seconds (monotonic clock) until which the circuit said no; 0 when it did not.
    circuit_open_until: float = 0.0
    # Ids of rows left pending after a failure or a breaker rejection, until delivered.
    unresolved: set[int] = field(default_factory=set)
    # Ids of the current batch's rows the breaker kept from being sent.
    held: set[int] = field(default_factory=set)


class Drainer:
    """One drain run. ``stop`` may be set from a signal handler or another thread."""

    def __init__(
        self,
        options: DrainOptions,
        *,
        transport: MemoryGateTransport | None = None,
        breaker=None,
        stop: threading.Event | None = None,
        on_progress: Callable[[DrainReport], None] | None = None,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.options = options
        self.transport = transport or transport_from_settings()
        self.breaker = breaker if breaker is not None else get_breaker(BREAKER_NAME)
        self.stop = stop or threading.Event()
        self.on_progress = on_progress
        self.uniform = uniform
        # A request may take a few timeouts (connect, write, read); stop sending that long before
        # the lease runs out so no other drainer can have the row by the time we send it.
        self.send_margin = min(4 * self.transport.timeout, options.lease_seconds / 2)

    def run(self) -> DrainReport:
        started = time.monotonic()
        deadline = started + self.options.max_seconds if self.options.max_seconds else None
        totals = _Totals()
        stopped_because = "nothing due"
        loop = asyncio.new_event_loop()
        client = self.transport.async_client(max_connections=self.options.concurrency)
        try:
            while True:
                if self.stop.is_set():
                    stopped_because = STOP_REQUESTED
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    stopped_because = "max seconds reached"
                    break
                wait = totals.circuit_open_until - time.monotonic()
                if wait > 0:
                    if not self.options.loop and wait > SHORT_CIRCUIT_WAIT:
                        stopped_because = "circuit open"
                        break
                    self._sleep(wait, deadline)
                    continue
                if self.options.loop:
                    close_old_connections()
                batch_started = time.monotonic()
                claim = buffer.claim(self.options.batch_size, self.options.lease_seconds)
                if not claim.receipts:
                    if not self.options.loop:
                        break
                    self._sleep(self.options.idle_seconds, deadline)
                    continue
                totals.claimed += len(claim.receipts)
                totals.batches += 1
                totals.held.clear()
                try:
                    settlements = loop.run_until_complete(self._send(client, claim, totals))
                except BaseException:
                    # Whatever went wrong, rows we hold go back rather than wait for the lease.
                    buffer.release(claim, [row.id for row in claim.receipts])
                    raise
                written = self._settle(claim, settlements, totals)
                signals.receipt_batch_drained.send(
                    Drainer,
                    size=len(claim.receipts),
                    delivered=written[Settle.DELIVERED],
                    failed=written[Settle.RETRY],
                    dead=written[Settle.DEAD],
                    released=written[Settle.RELEASE],
                    duration=time.monotonic() - batch_started,
                )
                if self.on_progress is not None:
                    self.on_progress(self._report(totals, started, 0, stopped_because))
        finally:
            loop.run_until_complete(client.aclose())
            loop.close()
        if self.options.loop:
            close_old_connections()
        return self._report(totals, started, buffer.due_count(), stopped_because)

    def _sleep(self, seconds: float, deadline: float | None) -> None:
        if deadline is not None:
            seconds = min(seconds, max(0.0, deadline - time.monotonic()))
        self.stop.wait(seconds)

    async def _send(
        self, client: httpx.AsyncClient, claim: Claim, totals: _Totals
    ) -> list[Settlement]:
        rows = iter(claim.receipts)
        settlements: list[Settlement] = []
        send_until = time.monotonic() + self.options.lease_seconds - self.send_margin

        async def worker() -> None:
            for row in rows:
                settlements.append(await self._send_one(client, row, send_until, totals))

        workers = min(self.options.concurrency, len(claim.receipts))
        await asyncio.gather(*(worker() for _ in range(workers)))
        return settlements

    async def _send_one(
        self, client: httpx.AsyncClient, row: ClaimedReceipt, send_until: float, totals: _Totals
    ) -> Settlement:
        if self.stop.is_set() or time.monotonic() >= send_until:
            return Settlement(row.id, Settle.RELEASE)
        permit = None
        if self.breaker.enabled:
            try:
                permit = await self.breaker.aacquire()
            except CircuitOpen as exc:
                totals.circuit_open_until = max(
                    totals.circuit_open_until, time.monotonic() + exc.retry_after
                )
                totals.held.add(row.id)
                retry_at = timezone.now() + timedelta(seconds=exc.retry_after)
                return Settlement(row.id, Settle.RELEASE, retry_at)
        outcome = await self.transport.asend(client, row.receipt_id, encode_payload(row.payload))
        if permit is not None:
            await areport(permit, outcome)
        return self._settlement(row, outcome)

    def _settlement(self, row: ClaimedReceipt, outcome: DeliveryOutcome) -> Settlement:
        if outcome.kind is OutcomeKind.DELIVERED:
            return Settlement(row.id, Settle.DELIVERED)
        if outcome.kind is OutcomeKind.REFUSED:
            return Settlement(row.id, Settle.DEAD, error=f"refused by MemoryGate: {outcome.error}")
        attempts = row.attempts + 1
        if attempts >= self.options.max_attempts:
            return Settlement(
                row.id, Settle.DEAD, error=f"gave up after {attempts} attempts: {outcome.error}"
            )
        delay = retry_delay(attempts, outcome.retry_after, uniform=self.uniform)
        return Settlement(
            row.id, Settle.RETRY, timezone.now() + timedelta(seconds=delay), outcome.error
        )

    def _settle(
        self, claim: Claim, settlements: Sequence[Settlement], totals: _Totals
    ) -> dict[Settle, int]:
        written = buffer.settle(claim, settlements)
        totals.delivered += written[Settle.DELIVERED]
        totals.failed += written[Settle.RETRY]
        totals.dead += written[Settle.DEAD]
        skipped = min(len(totals.held), written[Settle.RELEASE])
        totals.skipped_open_circuit += skipped
        totals.released += written[Settle.RELEASE] - skipped
        totals.lost_lease += len(settlements) - sum(written.values())
        by_id = {row.id: row.receipt_id for row in claim.receipts}
        for s in settlements:
            if s.result is Settle.RETRY or s.id in totals.held:
                totals.unresolved.add(s.id)
            else:
                totals.unresolved.discard(s.id)
            if s.result is Settle.DELIVERED:
                signals.receipt_delivered.send(Drainer, receipt_id=by_id[s.id], buffered=True)
            elif s.result is Settle.DEAD:
                signals.receipt_dead_lettered.send(Drainer, receipt_id=by_id[s.id], reason=s.error)
        return written

    def _report(
        self, totals: _Totals, started: float, remaining_due: int, stopped_because: str
    ) -> DrainReport:
        return DrainReport(
            claimed=totals.claimed,
            delivered=totals.delivered,
            failed=totals.failed,
            dead=totals.dead,
            skipped_open_circuit=totals.skipped_open_circuit,
            released=totals.released,
            lost_lease=totals.lost_lease,
            still_failing=len(totals.unresolved),
            remaining_due=remaining_due,
            batches=totals.batches,
            elapsed=time.monotonic() - started,
            stopped_because=stopped_because,
        )


def drain(
    options: DrainOptions | None = None,
    *,
    transport: MemoryGateTransport | None = None,
    breaker=None,
    stop: threading.Event | None = None,
    on_progress: Callable[[DrainReport], None] | None = None,
) -> DrainReport:
    """Run one drain (see the module docstring) and return its report.

    ``transport`` defaults to one built from settings, which raises ``DeliveryError`` when
    ``MEMORYGATE_URL`` is unset; ``breaker`` defaults to the ``memorygate`` breaker.
    """
    drainer = Drainer(
        options or DrainOptions(),
        transport=transport,
        breaker=breaker,
        stop=stop,
        on_progress=on_progress,
    )
    return drainer.run()
