"""The MemoryGate client of the original integration guide: emit = breaker + transport, else buffer.

``emit_receipt`` (async) and ``emit_receipt_sync`` (its twin for sync code: WSGI views, management
commands, the shell) do the same thing:

1. validate (``ValueError`` naming the field; nothing sent or stored),
2. give the receipt its ``receipt_id`` and ``created_at``, once,
3. try one POST through the ``memorygate`` breaker (no breaker when its policy is disabled),
4. answer, without raising for anything MemoryGate or the network did:

   * ``{"status": "delivered", "receipt_id": ...}``: 2xx, or 409 (MemoryGate already had it). No
     database write.
   * ``{"status": "buffered", "receipt_id": ..., "reason": ...}``: a transient failure (401, 403,
     408, 425, 429, 5xx, timeout, connection error), the circuit open, ``MEMORYGATE_URL`` unset, or
     an unexpected error while sending. A ``pending`` ``BufferedReceipt`` now holds it, due at once
     or after ``Retry-After`` / the circuit's retry time; ``drain_receipts`` delivers it.
   * ``{"status": "rejected", "receipt_id": ..., "reason": ...}``: MemoryGate refused the receipt
     itself (400, 404, 413, 422). It is kept as a ``dead`` row for staff to inspect.

   A receipt accepted past validation is never lost: when even the database write fails, that
   error propagates, because claiming "buffered" would be a lie.

Cancellation: Django cancels an ASGI view whose client disconnected, so ``emit_receipt`` may be
cancelled mid-delivery. It then stores the receipt as ``pending`` (whether MemoryGate got the POST
is unknown; its idempotency key makes the drain's resend safe), settles the breaker permit as
ignored, and re-raises the cancellation. Those two steps, like every buffer write and permit
settlement on the async path, run shielded, so a second cancellation cannot interrupt them. Every
other way out of an attempt (an unexpected exception included) settles its permit too, so a
HALF_OPEN probe never holds its slot until its lease expires.

Connections: the sync twin shares one thread-safe pooled ``httpx.Client``. httpx's async clients
belong to the event loop that opened them, so the client keeps one ``httpx.AsyncClient`` per
running loop. Under ASGI that is one pool for the process. An async view served by WSGI (Django's
``async_to_sync``) runs on a fresh loop per request, which ``asyncio.run`` shuts down afterwards:
each pool is tied to its loop's ``shutdown_asyncgens()`` by a suspended async generator, which
closes the pool then, so nothing outlives its loop; pools of loops closed without that shutdown
are dropped when the next pool is made. Sync code should still call ``emit_receipt_sync``, which
pools across requests.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import AsyncGenerator, Awaitable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils import timezone

from resilience import signals
from resilience.breaker import Permit, aget_breaker, get_breaker
from resilience.conf import resilience_settings
from resilience.exceptions import CircuitOpen
from resilience.models import ReceiptStatus
from resilience.receipts import buffer
from resilience.receipts.schema import Receipt, build_receipt
from resilience.receipts.transport import (
    DeliveryOutcome,
    MemoryGateTransport,
    OutcomeKind,
    areport,
    report,
)

logger = logging.getLogger(__name__)

BREAKER_NAME = "memorygate"
UNCONFIGURED_REASON = "MEMORYGATE_URL is not set"
CANCELLED_REASON = "emit cancelled before MemoryGate's answer arrived"


@dataclass(frozen=True, slots=True)
class _Attempt:
    """What trying to deliver produced: an outcome, or why nothing was sent (``not_sent``)."""

    outcome: DeliveryOutcome | None = None
    not_sent: str = ""
    retry_after: float | None = None


class MemoryGateClient:
    """Emits receipts to one MemoryGate. ``base_url=None`` buffers every receipt.

    ``api_key`` is sent as a bearer token and never logged or shown; ``timeout`` is per request,
    in seconds; ``transport`` replaces httpx's network transport (``httpx.MockTransport`` ...);
    ``max_connections`` bounds each pool.
    """

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None = None,
        timeout: float = 0.5,
        *,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
        breaker_name: str = BREAKER_NAME,
        max_connections: int = 100,
    ) -> None:
        self._transport = (
            MemoryGateTransport(base_url, api_key, timeout, transport=transport)
            if base_url
            else None
        )
        self.breaker_name = breaker_name
        self._max_connections = max_connections
        self._sync_client: httpx.Client | None = None
        self._lock = threading.Lock()
        # Each running loop's pool and the generator that closes it when the loop shuts down.
        self._async_pools: dict[
            asyncio.AbstractEventLoop, tuple[httpx.AsyncClient, AsyncGenerator[None, None]]
        ] = {}

    def __repr__(self) -> str:
        target = self._transport.url if self._transport else "unconfigured"
        return f"<MemoryGateClient {target}>"

    # The guide's API

    async def emit_receipt(
        self,
        *,
        tenant_id: uuid.UUID | str,
        receipt_type: str,
        from_principal: Mapping[str, Any],
        to_principal: Mapping[str, Any],
        task_id: uuid.UUID | str | None = None,
        lease_id: uuid.UUID | str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, str]:
        """Deliver a receipt now or buffer it; see the module docstring for the answer."""
        receipt = build_receipt(
            tenant_id=tenant_id,
            receipt_type=receipt_type,
            from_principal=from_principal,
            to_principal=to_principal,
            task_id=task_id,
            lease_id=lease_id,
            body=body,
        )
        attempt = await self._aattempt(receipt)
        result, row = self._decide(receipt, attempt)
        if row is not None:
            await _shielded(buffer.astore(receipt, **row))
        self._announce(receipt, result)
        return result

    def emit_receipt_sync(
        self,
        *,
        tenant_id: uuid.UUID | str,
        receipt_type: str,
        from_principal: Mapping[str, Any],
        to_principal: Mapping[str, Any],
        task_id: uuid.UUID | str | None = None,
        lease_id: uuid.UUID | str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, str]:
        """``emit_receipt`` for sync code. Calling it while an event loop runs in this thread is
        a ``RuntimeError``: it would block the loop (``await emit_receipt`` there instead)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "emit_receipt_sync() was called from async code; use `await emit_receipt()`."
            )
        receipt = build_receipt(
            tenant_id=tenant_id,
            receipt_type=receipt_type,
            from_principal=from_principal,
            to_principal=to_principal,
            task_id=task_id,
            lease_id=lease_id,
            body=body,
        )
        attempt = self._attempt(receipt)
        result, row = self._decide(receipt, attempt)
        if row is not None:
            buffer.store(receipt, **row)
        self._announce(receipt, result)
        return result

    def get_circuit_stats(self) -> dict[str, Any]:
        """The ``memorygate`` breaker's state, counters and policy (see DESIGN.md)."""
        return get_breaker(self.breaker_name).stats()

    async def reset_circuit(self) -> None:
        """Close the circuit for every worker."""
        await (await aget_breaker(self.breaker_name)).areset()

    def close(self) -> None:
        """Close the sync pool (async pools close with their loop, or with ``aclose``)."""
        with self._lock:
            client, self._sync_client = self._sync_client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close the running loop's async pool."""
        pool = self._async_pools.get(asyncio.get_running_loop())
        if pool is not None:
            await pool[1].aclose()  # resumes the pool's closer, which drops and closes it

    # Delivery

    async def _aattempt(self, receipt: Receipt) -> _Attempt:
        if self._transport is None:
            return _Attempt(not_sent=UNCONFIGURED_REASON)
        permit: Permit | None = None
        try:
            breaker = await aget_breaker(self.breaker_name)
            if breaker.enabled:
                try:
                    permit = await breaker.aacquire()
                except CircuitOpen as exc:
                    return _circuit_open(exc)
            outcome = await self._transport.asend(
                await self._aclient(), str(receipt.receipt_id), receipt.wire_bytes
            )
        except asyncio.CancelledError:
            await _shielded(self._keep_cancelled(receipt, permit))
            raise
        except Exception as exc:
            if permit is not None:
                await _shielded(_asettle(permit, None))
            return _unexpected(receipt, exc)
        if permit is not None:
            try:
                await _shielded(_asettle(permit, outcome))
            except asyncio.CancelledError:
                # Cancelled after MemoryGate answered: the answer decides what is stored.
                _, row = self._decide(receipt, _Attempt(outcome))
                if row is not None:
                    await _shielded(buffer.astore(receipt, **row))
                raise
        return _Attempt(outcome)

    async def _keep_cancelled(self, receipt: Receipt, permit: Permit | None) -> None:
        try:
            await buffer.astore(receipt, **_pending(0, timezone.now(), CANCELLED_REASON))
        finally:
            await _asettle(permit, None)
        self._announce(receipt, _answer("buffered", str(receipt.receipt_id), CANCELLED_REASON))

    def _attempt(self, receipt: Receipt) -> _Attempt:
        if self._transport is None:
            return _Attempt(not_sent=UNCONFIGURED_REASON)
        permit: Permit | None = None
        outcome: DeliveryOutcome | None = None
        try:
            breaker = get_breaker(self.breaker_name)
            if breaker.enabled:
                try:
                    permit = breaker.acquire()
                except CircuitOpen as exc:
                    return _circuit_open(exc)
            outcome = self._transport.send(
                self._sync_client_or_new(), str(receipt.receipt_id), receipt.wire_bytes
            )
        except Exception as exc:
            return _unexpected(receipt, exc)
        finally:
            # However the attempt ended (KeyboardInterrupt included), the permit is settled.
            _settle(permit, outcome)
        return _Attempt(outcome)

    def _decide(
        self, receipt: Receipt, attempt: _Attempt
    ) -> tuple[dict[str, str], dict[str, Any] | None]:
        """The answer to give, and the buffer row to write (None: nothing to write)."""
        receipt_id = str(receipt.receipt_id)
        now = timezone.now()
        outcome = attempt.outcome
        if outcome is None:
            retry_at = now + timedelta(seconds=attempt.retry_after or 0)
            row = _pending(0, retry_at, attempt.not_sent)
            return _answer("buffered", receipt_id, attempt.not_sent), row
        if outcome.kind is OutcomeKind.DELIVERED:
            return _answer("delivered", receipt_id), None
        if outcome.kind is OutcomeKind.REFUSED:
            row = {
                "status": ReceiptStatus.DEAD,
                "attempts": 1,
                "next_attempt_at": now,
                "last_error": f"refused by MemoryGate: {outcome.error}",
            }
            return _answer("rejected", receipt_id, outcome.error), row
        retry_at = now + timedelta(seconds=outcome.retry_after or 0)
        return _answer("buffered", receipt_id, outcome.error), _pending(1, retry_at, outcome.error)

    def _announce(self, receipt: Receipt, result: dict[str, str]) -> None:
        receipt_id = result["receipt_id"]
        status = result["status"]
        if status == "delivered":
            signals.receipt_delivered.send(type(self), receipt_id=receipt_id, buffered=False)
            return
        reason = result["reason"]
        if status == "buffered":
            # DEBUG, not INFO: during an outage every emit lands here, and a line per receipt
            # would bury the breaker's transition lines; metrics and the status page count them.
            logger.debug("Receipt %s (%s) buffered: %s", receipt_id, receipt.receipt_type, reason)
            signals.receipt_buffered.send(
                type(self), receipt_id=receipt_id, receipt_type=receipt.receipt_type, reason=reason
            )
        else:
            logger.warning("Receipt %s refused by MemoryGate: %s", receipt_id, reason)
            signals.receipt_dead_lettered.send(type(self), receipt_id=receipt_id, reason=reason)

    # Pools

    async def _aclient(self) -> httpx.AsyncClient:
        """The running loop's pool, made on first use and closed when the loop shuts down."""
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        pool = self._async_pools.get(loop)
        if pool is not None:
            return pool[0]
        client = self._transport.async_client(self._max_connections)
        closer = self._close_at_shutdown(loop, client)
        with self._lock:
            for closed in [other for other in self._async_pools if other.is_closed()]:
                # Closed without shutdown_asyncgens(): a dead loop cannot run aclose(), so the
                # pool is let go and the garbage collector closes its sockets.
                del self._async_pools[closed]
            self._async_pools[loop] = (client, closer)
        # The first step registers the generator with the loop (its firstiter hook) and stops
        # at the ``yield``; it never suspends, so no other task can see a half-made pool.
        await anext(closer)
        return client

    async def _close_at_shutdown(
        self, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient
    ) -> AsyncGenerator[None, None]:
        """Suspended while ``loop`` runs; ``loop.shutdown_asyncgens()`` (``asyncio.run`` and
        ``async_to_sync`` call it before closing a loop) or ``aclose`` resumes it to close."""
        try:
            yield
        finally:
            with self._lock:
                if self._async_pools.get(loop, (None,))[0] is client:
                    del self._async_pools[loop]
            await client.aclose()

    def _sync_client_or_new(self) -> httpx.Client:
        assert self._transport is not None
        client = self._sync_client
        if client is None:
            with self._lock:
                if self._sync_client is None:
                    self._sync_client = self._transport.sync_client(self._max_connections)
                client = self._sync_client
        return client


def _answer(status: str, receipt_id: str, reason: str | None = None) -> dict[str, str]:
    answer = {"status": status, "receipt_id": receipt_id}
    if reason is not None:
        answer["reason"] = reason
    return answer


def _pending(attempts: int, retry_at: Any, error: str) -> dict[str, Any]:
    return {
        "status": ReceiptStatus.PENDING,
        "attempts": attempts,
        "next_attempt_at": retry_at,
        "last_error": error,
    }


_background: set[asyncio.Future[Any]] = set()


async def _shielded(work: Awaitable[Any]) -> Any:
    """Await ``work`` so that cancelling the caller does not cancel it: the caller still sees
    ``CancelledError`` at once, while ``work`` runs to its end (a reference kept meanwhile, since
    the loop holds only a weak one)."""
    task = asyncio.ensure_future(work)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return await asyncio.shield(task)


def _settle(permit: Permit | None, outcome: DeliveryOutcome | None) -> None:
    """Tell ``permit`` how its call ended (None: it did not end in an answer, so ignore)."""
    if permit is None:
        return
    try:
        if outcome is None:
            permit.ignore()
        else:
            report(permit, outcome)
    except Exception:
        # A failing breaker store must not turn MemoryGate's answer into an error.
        logger.exception("Could not settle a breaker permit.")


async def _asettle(permit: Permit | None, outcome: DeliveryOutcome | None) -> None:
    """``_settle`` for async code."""
    if permit is None:
        return
    try:
        if outcome is None:
            await permit.aignore()
        else:
            await areport(permit, outcome)
    except Exception:
        logger.exception("Could not settle a breaker permit.")


def _circuit_open(exc: CircuitOpen) -> _Attempt:
    reason = f"circuit open (retry in {exc.retry_after:.0f} s)"
    return _Attempt(not_sent=reason, retry_after=exc.retry_after)


def _unexpected(receipt: Receipt, exc: Exception) -> _Attempt:
    # A bug or an odd environment must not lose the receipt: buffer it and say why.
    logger.exception("Unexpected error delivering receipt %s; buffering it.", receipt.receipt_id)
    return _Attempt(not_sent=f"unexpected error: {type(exc).__name__}")


_client: MemoryGateClient | None = None
_client_lock = threading.Lock()


def get_memorygate_client() -> MemoryGateClient:
    """The process's client, built from ``RESILIENCE`` on first use and again after a change."""
    global _client  # noqa: PLW0603
    client = _client
    if client is None:
        with _client_lock:
            if _client is None:
                _client = MemoryGateClient(
                    resilience_settings.MEMORYGATE_URL,
                    resilience_settings.MEMORYGATE_API_KEY,
                    resilience_settings.MEMORYGATE_TIMEOUT_SECONDS,
                )
            client = _client
    return client


@receiver(setting_changed)
def _forget_client(*, setting: str, **kwargs: Any) -> None:
    global _client
    if setting == "RESILIENCE":
        with _client_lock:
            old, _client = _client, None
        if old is not None:
            old.close()
