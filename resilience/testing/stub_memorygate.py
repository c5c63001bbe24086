"""A stub MemoryGate: the receipt endpoint of the wire contract, plus faults injected on demand.

Tests use it to prove delivery over real HTTP, and the drain benchmark uses it as its target, so it
must be cheap per request: it is a bare ``asyncio.Protocol`` around ``httptools``' request parser on
uvloop's event loop when uvloop is importable, in one process and one thread. It never imports
Django, so it starts in a fraction of a second and measures the client, not itself.

Run it::

    python -m resilience.testing.stub_memorygate --host 127.0.0.1 --port 8765 \\
        --api-key KEY --max-body-bytes 65536

``--port 0`` picks a free port. The key falls back to ``$MEMORYGATE_API_KEY``; with no key (or an
empty one) every request is accepted without ``Authorization``. One line on stdout says where it
listens; SIGINT or SIGTERM stops it with exit status 0.

The contract
------------
``POST /v1/receipts`` takes a receipt as JSON (``receipt_id``, ``tenant_id``, ``receipt_type``,
``from``, ``to``, ``body``, ``created_at``, optional ``task_id`` and ``lease_id``) with
``Authorization: Bearer <key>`` and ``Idempotency-Key: <receipt_id>``. Checks run in this order,
the first that fails decides the answer:

=====  ==========================================================================================
401    ``Authorization`` missing or wrong (only when the server has a key)
413    body larger than ``--max-body-bytes`` (read and discarded, so the connection stays usable)
400    ``Idempotency-Key`` missing, body not JSON (``NaN`` and ``Infinity`` included)
422    schema violation; the JSON answer names the field (``"from.kind"``, ``"created_at"`` ...).
       Unknown fields are violations too, so a client drifting from the contract hears about it
400    ``Idempotency-Key`` differs from ``receipt_id``
409    that ``receipt_id`` is already stored; the stored receipt is kept as it was
201    stored: ``{"receipt_id": ..., "status": "stored"}``
=====  ==========================================================================================

Receipt ids are compared as UUIDs, so case and hyphenation do not make a duplicate look new.
``GET /v1/health`` answers 200. Other paths answer 404, other methods 405. Every answer is JSON.

Control API (no authentication; it is a test double)
----------------------------------------------------
``GET /_stub/faults``
    The faults in force.
``POST /_stub/faults``
    A JSON object with any subset of the fields below, merged into the faults in force. One
    invalid value answers 400 naming the field and changes nothing.
``DELETE /_stub/faults``
    Back to no faults.
``GET /_stub/stats``
    ``received`` (receipt POSTs seen, faulted and dropped ones included), ``stored``,
    ``duplicates``, ``dropped``, and ``by_status`` (answers to receipt POSTs by status code, as
    strings). Health checks and control calls are not counted.
``GET /_stub/receipts``
    Stored receipts as ``{receipt_id: receipt}``, each exactly as it was posted.
``POST /_stub/reset``
    Clears receipts, counters and faults.

Faults apply to receipt POSTs only and come before every check above, as an outage would:

``drop_next`` (int), ``drop_rate`` (0..1)
    Close the TCP connection without answering (``transport.abort()``), so the client sees a
    connection error. Consulted first.
``fail_next`` (int), ``fail_rate`` (0..1), ``fail_status`` (400..599, default 503)
    Answer ``fail_status``. ``*_next`` counts down one per request; a request consumes at most
    one fault.
``retry_after`` (int seconds, or null)
    Sent as ``Retry-After`` on ``fail_*`` answers.
``latency_ms`` (number)
    Delay every receipt answer, faulted or not, without blocking other connections. The receipt
    is stored before the delay: the slow-reply case, where a client that times out and retries
    must be saved by the idempotency key.

A faulted request is never stored.

Concurrency
-----------
Everything runs on the event loop's thread, so state needs no locks and every count is exact.
Requests on one connection are answered one at a time and in order, pipelined or not; a delayed
answer holds back the answers queued behind it, as HTTP/1.1 requires.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hmac
import json
import os
import random
import signal
import sys
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from http import HTTPStatus
from typing import Any, cast

import httptools

RECEIPT_TYPES = frozenset(
    {
        "task.assigned",
        "task.accepted",
        "task.started",
        "task.progress",
        "task.completed",
        "task.failed",
        "task.canceled",
        "task.retry_scheduled",
        "task.result_ready",
        "lease.expired",
        "receipt.acknowledged",
        "system.anomaly",
    }
)
PRINCIPAL_KINDS = frozenset({"agent", "worker", "service", "system", "human"})
REQUIRED_FIELDS = ("receipt_id", "tenant_id", "receipt_type", "from", "to", "body", "created_at")
OPTIONAL_FIELDS = ("task_id", "lease_id")
DEFAULT_MAX_BODY_BYTES = 65536

# A connection with this many requests waiting (pipelined behind a delayed answer) stops being
# read until the backlog drains, so a client cannot grow the queue without bound.
_MAX_QUEUED_REQUESTS = 64


class FieldError(ValueError):
    """A refused value; ``field`` is its dotted path (``"from.kind"``), None for the whole body."""

    def __init__(self, field: str | None, detail: str) -> None:
        super().__init__(f"{field}: {detail}" if field else detail)
        self.field = field
        self.detail = detail


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads_strict(data: bytes) -> Any:
    """Parse JSON as RFC 8259 does: Python's ``NaN``/``Infinity`` extension is refused."""
    return json.loads(data, parse_constant=_reject_constant)


def _uuid(value: Any, field: str) -> uuid.UUID:
    if not isinstance(value, str):
        raise FieldError(field, "must be a UUID string")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise FieldError(field, "must be a UUID string") from None


def _principal(value: Any, field: str) -> None:
    if not isinstance(value, dict):
        raise FieldError(field, 'must be an object {"kind": ..., "id": ...}')
    for key in value:
        if key not in ("kind", "id"):
            raise FieldError(f"{field}.{key}", "unknown field")
    kind = value.get("kind")
    if kind not in PRINCIPAL_KINDS:
        raise FieldError(f"{field}.kind", f"must be one of {', '.join(sorted(PRINCIPAL_KINDS))}")
    principal_id = value.get("id")
    if not isinstance(principal_id, str) or not principal_id.strip():
        raise FieldError(f"{field}.id", "must be a non-empty string")


def validate_receipt(receipt: Any) -> uuid.UUID:
    """Check a decoded receipt against the contract and return its ``receipt_id``.

    Raises ``FieldError`` for the first violation found, in field order. This is deliberately not
    the client's own validator: a stub that shared it could not catch the client's mistakes.
    """
    if not isinstance(receipt, dict):
        raise FieldError(None, "the request body must be a JSON object")
    for field in receipt:
        if field not in REQUIRED_FIELDS and field not in OPTIONAL_FIELDS:
            raise FieldError(field, "unknown field")
    for field in REQUIRED_FIELDS:
        if field not in receipt:
            raise FieldError(field, "is required")
    receipt_id = _uuid(receipt["receipt_id"], "receipt_id")
    _uuid(receipt["tenant_id"], "tenant_id")
    if receipt["receipt_type"] not in RECEIPT_TYPES:
        raise FieldError("receipt_type", f"must be one of {', '.join(sorted(RECEIPT_TYPES))}")
    _principal(receipt["from"], "from")
    _principal(receipt["to"], "to")
    for field in OPTIONAL_FIELDS:
        if receipt.get(field) is not None:
            _uuid(receipt[field], field)
    if not isinstance(receipt["body"], dict):
        raise FieldError("body", "must be a JSON object")
    created_at = receipt["created_at"]
    if not isinstance(created_at, str):
        raise FieldError("created_at", "must be an ISO-8601 string")
    try:
        datetime.fromisoformat(created_at)
    except ValueError:
        raise FieldError("created_at", "must be an ISO-8601 string") from None
    return receipt_id


@dataclasses.dataclass(frozen=True)
class Faults:
    """The faults in force; replaced as a whole, so a rejected update changes nothing."""

    fail_next: int = 0
    fail_status: int = 503
    fail_rate: float = 0.0
    latency_ms: float = 0
    drop_next: int = 0
    drop_rate: float = 0.0
    retry_after: int | None = None

    def updated(self, changes: Any) -> Faults:
        """Return these faults with ``changes`` applied, or raise ``FieldError`` naming a field."""
        if not isinstance(changes, dict):
            raise FieldError(None, "faults must be a JSON object")
        known = {f.name for f in dataclasses.fields(self)}
        for name, value in changes.items():
            if name not in known:
                raise FieldError(name, f"unknown fault; known: {', '.join(sorted(known))}")
            if name in ("fail_next", "drop_next"):
                _check_int(name, value, low=0)
            elif name == "fail_status":
                _check_int(name, value, low=400, high=599)
            elif name in ("fail_rate", "drop_rate"):
                _check_number(name, value, high=1)
            elif name == "latency_ms":
                _check_number(name, value)
            elif name == "retry_after" and value is not None:
                _check_int(name, value, low=0)
        return dataclasses.replace(self, **changes)


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(name, "must be an integer")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise FieldError(name, f"must be {bounds}")


def _check_number(name: str, value: Any, high: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldError(name, "must be a number")
    if value < 0 or (high is not None and value > high):
        bounds = f"between 0 and {high}" if high is not None else "at least 0"
        raise FieldError(name, f"must be {bounds}")


@dataclasses.dataclass(slots=True)
class Request:
    """One parsed request; ``oversized`` means the body went past the limit and was discarded."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    oversized: bool
    keep_alive: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """What to do with a request: answer ``status`` with ``payload``, or ``drop`` the connection."""

    status: int = 200
    payload: Any = None
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    drop: bool = False


def _error(status: int, error: str, detail: str, field: str | None = None, **extra: Any) -> Reply:
    payload: dict[str, Any] = {"error": error, "detail": detail}
    if field is not None or status == 422:
        payload["field"] = field
    return Reply(status, payload, **extra)


class StubApp:
    """The server's state and request handling, independent of sockets and parsing."""

    def __init__(self, api_key: str | None, max_body_bytes: int) -> None:
        self.api_key = api_key or None
        self.max_body_bytes = max_body_bytes
        self.reset()
        self._routes = {
            "/v1/receipts": {"POST": self._post_receipt},
            "/v1/health": {"GET": self._health},
            "/_stub/faults": {
                "GET": self._get_faults,
                "POST": self._post_faults,
                "DELETE": self._delete_faults,
            },
            "/_stub/stats": {"GET": self._get_stats},
            "/_stub/receipts": {"GET": self._get_receipts},
            "/_stub/reset": {"POST": self._reset},
        }

    def reset(self) -> None:
        self.faults = Faults()
        self.receipts: dict[uuid.UUID, Any] = {}
        self.received = 0
        self.duplicates = 0
        self.dropped = 0
        self.by_status: dict[int, int] = {}

    def handle(self, request: Request) -> Reply:
        methods = self._routes.get(request.path)
        if methods is None:
            return _error(404, "not_found", f"no route for {request.path}")
        handler = methods.get(request.method)
        if handler is None:
            allow = ", ".join(methods)
            headers = (("Allow", allow),)
            return _error(405, "method_not_allowed", f"allowed: {allow}", headers=headers)
        if request.oversized and handler is not self._post_receipt:
            return _too_large(self.max_body_bytes)
        return handler(request)

    def _post_receipt(self, request: Request) -> Reply:
        self.received += 1
        reply = self._receipt_reply(request)
        if reply.drop:
            self.dropped += 1
        else:
            self.by_status[reply.status] = self.by_status.get(reply.status, 0) + 1
        if self.faults.latency_ms:
            reply = dataclasses.replace(reply, delay=self.faults.latency_ms / 1000)
        return reply

    def _receipt_reply(self, request: Request) -> Reply:
        faults = self.faults
        if faults.drop_next:
            self.faults = dataclasses.replace(faults, drop_next=faults.drop_next - 1)
            return Reply(drop=True)
        if faults.drop_rate and random.random() < faults.drop_rate:
            return Reply(drop=True)
        if faults.fail_next:
            self.faults = dataclasses.replace(faults, fail_next=faults.fail_next - 1)
            return self._injected_failure()
        if faults.fail_rate and random.random() < faults.fail_rate:
            return self._injected_failure()

        authorization = request.headers.get("authorization")
        if self.api_key is not None and not _authorized(authorization, self.api_key):
            return _error(
                401,
                "unauthorized",
                "missing or wrong bearer token",
                headers=(("WWW-Authenticate", "Bearer"),),
            )
        if request.oversized:
            return _too_large(self.max_body_bytes)
        idempotency_key = request.headers.get("idempotency-key")
        if not idempotency_key:
            return _error(400, "bad_request", "Idempotency-Key is required", "Idempotency-Key")
        try:
            receipt = loads_strict(request.body)
        except ValueError as exc:
            return _error(400, "malformed_json", f"the request body is not valid JSON: {exc}")
        try:
            receipt_id = validate_receipt(receipt)
        except FieldError as exc:
            return _error(422, "invalid_receipt", exc.detail, exc.field)
        try:
            same_key = uuid.UUID(idempotency_key) == receipt_id
        except ValueError:
            same_key = False
        if not same_key:
            return _error(400, "bad_request", "must equal receipt_id", "Idempotency-Key")
        if receipt_id in self.receipts:
            self.duplicates += 1
            return Reply(409, {"receipt_id": str(receipt_id), "status": "duplicate"})
        self.receipts[receipt_id] = receipt
        return Reply(201, {"receipt_id": str(receipt_id), "status": "stored"})

    def _injected_failure(self) -> Reply:
        status = self.faults.fail_status
        headers: tuple[tuple[str, str], ...] = ()
        if self.faults.retry_after is not None:
            headers = (("Retry-After", str(self.faults.retry_after)),)
        return _error(status, "injected_fault", f"stub fault: answering {status}", headers=headers)

    def _health(self, request: Request) -> Reply:
        return Reply(200, {"status": "ok"})

    def _get_faults(self, request: Request) -> Reply:
        return Reply(200, dataclasses.asdict(self.faults))

    def _post_faults(self, request: Request) -> Reply:
        try:
            self.faults = self.faults.updated(loads_strict(request.body))
        except FieldError as exc:
            return _error(400, "invalid_fault", exc.detail, exc.field)
        except ValueError as exc:
            return _error(400, "malformed_json", f"the request body is not valid JSON: {exc}")
        return Reply(200, dataclasses.asdict(self.faults))

    def _delete_faults(self, request: Request) -> Reply:
        self.faults = Faults()
        return Reply(200, dataclasses.asdict(self.faults))

    def _get_stats(self, request: Request) -> Reply:
        return Reply(
            200,
            {
                "received": self.received,
                "stored": len(self.receipts),
                "duplicates": self.duplicates,
                "dropped": self.dropped,
                "by_status": {str(status): n for status, n in sorted(self.by_status.items())},
            },
        )

    def _get_receipts(self, request: Request) -> Reply:
        return Reply(200, {str(receipt_id): r for receipt_id, r in self.receipts.items()})

    def _reset(self, request: Request) -> Reply:
        self.reset()
        return Reply(200, {"status": "reset"})


def _authorized(header: str | None, api_key: str) -> bool:
    scheme, _, token = (header or "").partition(" ")
    token_matches = hmac.compare_digest(token.strip().encode(), api_key.encode())
    return scheme.lower() == "bearer" and token_matches


def _too_large(limit: int) -> Reply:
    return _error(413, "payload_too_large", f"the request body exceeds {limit} bytes")


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


_REASONS = {status: _reason(status) for status in range(100, 600)}
_PARSE_ERROR = object()


def encode_response(reply: Reply, keep_alive: bool) -> bytes:
    body = json.dumps(reply.payload, separators=(",", ":")).encode()
    head = [
        b"HTTP/1.1 %d %s" % (reply.status, _REASONS[reply.status]),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        b"Connection: keep-alive" if keep_alive else b"Connection: close",
    ]
    head.extend(f"{name}: {value}".encode("latin-1") for name, value in reply.headers)
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: parse with httptools, answer in order, honour keep-alive."""

    def __init__(self, stub: StubApp, connections: set[HttpProtocol]) -> None:
        self._stub = stub
        self._connections = connections
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._queue: deque[Request | object] = deque()
        self._pending: asyncio.Task[None] | None = None
        self._reading = True
        self._reset_message()

    def _reset_message(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._oversized = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._connections.discard(self)
        self._queue.clear()
        if self._pending is not None:
            self._pending.cancel()

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # Upgrades (h2c, websocket) are not part of the contract: refuse them like garbage.
            self._queue.append(_PARSE_ERROR)
        self._answer_queued()

    # httptools callbacks: collect only; answering happens after feed_data returns.

    def on_message_begin(self) -> None:
        self._reset_message()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        declared = self._headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._stub.max_body_bytes:
            self._oversized = True
        if (
            self._headers.get("expect", "").lower() == "100-continue"
            and not self._queue
            and self._pending is None
            and self._transport is not None
        ):
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._oversized:
            return
        self._body_size += len(body)
        if self._body_size > self._stub.max_body_bytes:
            self._oversized = True
            self._body.clear()
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._queue.append(
            Request(
                method=self._parser.get_method().decode("latin-1"),
                path=self._url.split(b"?", 1)[0].decode("latin-1"),
                headers=self._headers,
                body=b"".join(self._body),
                oversized=self._oversized,
                keep_alive=self._parser.should_keep_alive(),
            )
        )
        self._reset_message()

    # answering

    def _answer_queued(self) -> None:
        while self._queue and self._pending is None and self._transport is not None:
            request = self._queue.popleft()
            if not isinstance(request, Request):
                reply = _error(400, "bad_request", "malformed HTTP request")
                self._send(reply, keep_alive=False)
                return
            reply = self._stub.handle(request)
            if reply.delay > 0:
                self._pending = asyncio.get_running_loop().create_task(
                    self._answer_later(reply, request.keep_alive)
                )
                break
            self._send(reply, request.keep_alive)
        self._flow_control()

    async def _answer_later(self, reply: Reply, keep_alive: bool) -> None:
        await asyncio.sleep(reply.delay)
        self._pending = None
        if self._transport is not None:
            self._send(reply, keep_alive)
            self._answer_queued()

    def _send(self, reply: Reply, keep_alive: bool) -> None:
        transport = self._transport
        assert transport is not None
        if reply.drop:
            transport.abort()
        else:
            transport.write(encode_response(reply, keep_alive))
            if not keep_alive:
                transport.close()
        if transport.is_closing():
            self._queue.clear()

    def _flow_control(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        backlog = len(self._queue) >= _MAX_QUEUED_REQUESTS
        if backlog and self._reading:
            self._transport.pause_reading()
            self._reading = False
        elif not backlog and not self._reading:
            self._transport.resume_reading()
            self._reading = True

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """What the command line decides; ``port`` 0 lets the kernel pick a free port."""

    host: str = "127.0.0.1"
    port: int = 8765
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


async def serve(config: ServerConfig) -> None:
    """Listen until SIGINT or SIGTERM, announcing the URL on stdout once the socket is bound."""
    loop = asyncio.get_running_loop()
    stub = StubApp(config.api_key, config.max_body_bytes)
    connections: set[HttpProtocol] = set()
    server = await loop.create_server(
        lambda: HttpProtocol(stub, connections),
        config.host,
        config.port,
        reuse_address=True,
        backlog=2048,
    )
    host, port = server.sockets[0].getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    auth = "bearer key required" if stub.api_key else "no auth"
    print(
        f"stub MemoryGate listening on http://{shown_host}:{port} "
        f"({auth}, max body {config.max_body_bytes} bytes)",
        flush=True,
    )
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    server.close()
    for connection in list(connections):
        connection.close()
    await server.wait_closed()


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be between 0 and 65535")
    return value


def parse_args(argv: Sequence[str] | None = None) -> ServerConfig:
    parser = argparse.ArgumentParser(
        prog="python -m resilience.testing.stub_memorygate",
        description="Stub MemoryGate server for tests and benchmarks.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=_port, default=8765, help="port; 0 picks a free one (default: %(default)s)"
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="bearer key required on receipt POSTs (default: $MEMORYGATE_API_KEY; none: no auth)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="larger request bodies are answered 413 (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    api_key = args.api_key if args.api_key is not None else os.environ.get("MEMORYGATE_API_KEY")
    return ServerConfig(
        host=args.host, port=args.port, api_key=api_key or None, max_body_bytes=args.max_body_bytes
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    with asyncio.Runner(loop_factory=_new_event_loop) as runner:
        try:
            runner.run(serve(config))
        except OSError as exc:
            where = f"{config.host}:{config.port}"
            print(f"stub MemoryGate cannot listen on {where}: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
