"""One POST of one receipt to MemoryGate, and what its answer means.

``MemoryGateTransport`` holds the per-object options (base URL, API key, timeout, an optional
httpx transport for tests) and builds pooled httpx clients with them; ``send`` / ``asend`` make
exactly one ``POST {url}/v1/receipts`` with ``Authorization: Bearer <key>`` and
``Idempotency-Key: <receipt_id>`` and return a ``DeliveryOutcome``. They never raise for anything
the network or MemoryGate does: httpx errors are translated here, at the boundary, into outcomes.

Classification (the wire contract):

==========================================  ==========  ================================
answer                                      ``kind``    breaker verdict
==========================================  ==========  ================================
2xx; 409 (that receipt_id is already kept)  delivered   success
400, 404, 413, 422                          refused     neither (the receipt is bad)
401, 403, 408, 429, 5xx, timeout, no conn.  retry       failure
425, anything else                          retry       neither
==========================================  ==========  ================================

``retry_after`` is ``Retry-After`` in seconds (delta-seconds or an HTTP date), capped at
``MAX_RETRY_AFTER_SECONDS`` so a confused server cannot park receipts for ever.

An outcome's ``error`` quotes MemoryGate's answer (or the network error) and ends up in
``last_error``, in the emit's ``reason``, in logs and in the breaker's stats, so it is scrubbed
before it is shortened: credentials of any kind (``clip_error``), and the transport's own API key
wherever it appears, as sent or as a server might echo it (percent-encoded, JSON-escaped).
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from resilience.breaker.machine import clip_error
from resilience.conf import resilience_settings
from resilience.exceptions import DeliveryError

RECEIPTS_PATH = "/v1/receipts"
MAX_RETRY_AFTER_SECONDS = 86_400.0
REFUSED_STATUSES = frozenset({400, 404, 413, 422})
BREAKER_FAILURE_STATUSES = frozenset({401, 403, 408, 429})
# Keep error texts stored in last_error short; MemoryGate's body is quoted, never our headers.
MAX_ERROR_CHARS = 300
REDACTED = "[redacted]"


class OutcomeKind(enum.StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REFUSED = "refused"


class BreakerVerdict(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    NEITHER = "neither"


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """What one POST achieved. ``error`` is a short, secret-free description for ``last_error``."""

    kind: OutcomeKind
    verdict: BreakerVerdict
    status_code: int | None = None
    retry_after: float | None = None
    error: str = ""

    @property
    def delivered(self) -> bool:
        return self.kind is OutcomeKind.DELIVERED


def classify_response(
    status_code: int,
    headers: Mapping[str, str],
    text: str = "",
    now: datetime | None = None,
    *,
    redact: Callable[[str], str] = clip_error,
) -> DeliveryOutcome:
    """The outcome of an HTTP answer, per the table in the module docstring.

    ``text`` (the answer's body) is quoted in ``error`` after ``redact``.
    """
    if 200 <= status_code < 300 or status_code == 409:
        return DeliveryOutcome(OutcomeKind.DELIVERED, BreakerVerdict.SUCCESS, status_code)
    error = f"HTTP {status_code}" + (f": {_shorten(redact(text))}" if text else "")
    if status_code in REFUSED_STATUSES:
        return DeliveryOutcome(
            OutcomeKind.REFUSED, BreakerVerdict.NEITHER, status_code, None, error
        )
    verdict = (
        BreakerVerdict.FAILURE
        if status_code >= 500 or status_code in BREAKER_FAILURE_STATUSES
        else BreakerVerdict.NEITHER
    )
    retry_after = parse_retry_after(headers.get("retry-after"), now=now)
    return DeliveryOutcome(OutcomeKind.RETRY, verdict, status_code, retry_after, error)


def classify_error(
    exc: httpx.HTTPError, *, redact: Callable[[str], str] = clip_error
) -> DeliveryOutcome:
    """The outcome of a request that got no answer (timeout, refused or reset connection)."""
    if isinstance(exc, httpx.TimeoutException):
        error = f"timeout ({type(exc).__name__})"
    else:
        error = f"connection error ({type(exc).__name__}: {_shorten(redact(str(exc)))})"
    return DeliveryOutcome(OutcomeKind.RETRY, BreakerVerdict.FAILURE, None, None, error)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, or None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


class MemoryGateTransport:
    """Per-object options for talking to one MemoryGate, and the one POST.

    ``transport`` (an ``httpx.BaseTransport``/``AsyncBaseTransport``) replaces the network, e.g.
    ``httpx.MockTransport`` in a user's unit tests; this project's tests use a real stub server.
    ``trust_env`` is httpx's: proxies and CA bundles from the environment apply unless False.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 0.5,
        *,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
        trust_env: bool = True,
    ) -> None:
        if not base_url:
            raise ValueError("base_url: MemoryGate's base URL is required.")
        if timeout <= 0:
            raise ValueError("timeout: must be a positive number of seconds.")
        self.url = base_url.rstrip("/") + RECEIPTS_PATH
        self.timeout = timeout
        self._api_key = api_key
        self._key_spellings = _spellings(api_key) if api_key else ()
        self._transport = transport
        self._trust_env = trust_env

    def __repr__(self) -> str:
        # The API key stays out of reprs, logs and tracebacks.
        return f"<MemoryGateTransport {self.url} timeout={self.timeout}s>"

    def redact(self, text: str) -> str:
        """``text`` fit for ``last_error``, logs and the admin: no API key, no credentials."""
        for spelling in self._key_spellings:
            text = text.replace(spelling, REDACTED)
        return clip_error(text)

    def headers(self, receipt_id: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Idempotency-Key": receipt_id}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def async_client(self, max_connections: int = 100) -> httpx.AsyncClient:
        """A pooled client for ``asend``; the caller owns it (and its event loop)."""
        transport = (
            self._transport if isinstance(self._transport, httpx.AsyncBaseTransport) else None
        )
        return httpx.AsyncClient(
            timeout=self.timeout,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
            trust_env=self._trust_env,
        )

    def sync_client(self, max_connections: int = 20) -> httpx.Client:
        """A pooled, thread-safe client for ``send``; the caller owns it."""
        transport = self._transport if isinstance(self._transport, httpx.BaseTransport) else None
        return httpx.Client(
            timeout=self.timeout,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
            trust_env=self._trust_env,
        )

    async def asend(
        self, client: httpx.AsyncClient, receipt_id: str, body: bytes
    ) -> DeliveryOutcome:
        try:
            response = await client.post(self.url, content=body, headers=self.headers(receipt_id))
        except httpx.HTTPError as exc:
            return classify_error(exc, redact=self.redact)
        return classify_response(
            response.status_code, response.headers, _error_text(response), redact=self.redact
        )

    def send(self, client: httpx.Client, receipt_id: str, body: bytes) -> DeliveryOutcome:
        try:
            response = client.post(self.url, content=body, headers=self.headers(receipt_id))
        except httpx.HTTPError as exc:
            return classify_error(exc, redact=self.redact)
        return classify_response(
            response.status_code, response.headers, _error_text(response), redact=self.redact
        )


def _spellings(secret: str) -> tuple[str, ...]:
    """How ``secret`` may appear in an echo: as is, percent-encoded, JSON-escaped."""
    forms = {secret, quote(secret, safe=""), json.dumps(secret)[1:-1]}
    # Longest first, so a spelling that contains another is replaced whole.
    return tuple(sorted(forms, key=len, reverse=True))


def _error_text(response: httpx.Response) -> str:
    if response.is_success or response.status_code == 409:
        return ""
    try:
        return response.text
    except (UnicodeDecodeError, httpx.HTTPError):
        return ""


def report(permit: Any, outcome: DeliveryOutcome) -> None:
    """Tell a breaker permit what the call it admitted achieved."""
    if outcome.verdict is BreakerVerdict.SUCCESS:
        permit.success()
    elif outcome.verdict is BreakerVerdict.FAILURE:
        permit.failure(outcome.error)
    else:
        permit.ignore()


async def areport(permit: Any, outcome: DeliveryOutcome) -> None:
    """``report`` for async code."""
    if outcome.verdict is BreakerVerdict.SUCCESS:
        await permit.asuccess()
    elif outcome.verdict is BreakerVerdict.FAILURE:
        await permit.afailure(outcome.error)
    else:
        await permit.aignore()


def transport_from_settings() -> MemoryGateTransport:
    """The transport settings describe; ``DeliveryError`` when ``MEMORYGATE_URL`` is unset."""
    url = resilience_settings.MEMORYGATE_URL
    if not url:
        raise DeliveryError("RESILIENCE['MEMORYGATE_URL'] is not set; nowhere to deliver receipts.")
    return MemoryGateTransport(
        url,
        resilience_settings.MEMORYGATE_API_KEY,
        resilience_settings.MEMORYGATE_TIMEOUT_SECONDS,
    )
