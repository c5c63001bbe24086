"""Fixtures of the receipts suite: settings pointed at the stub MemoryGate, receipts, a dead port.

Every test gets fresh breakers (the memory store would otherwise carry one test's open circuit
into the next) and a fresh process client.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from model_bakery import baker

from resilience.breaker import forget_breakers
from resilience.models import BreakerPolicy, BufferedReceipt, ReceiptStatus
from resilience.testing.stub_process import StubMemoryGate
from tests.conftest import PROJECT_ROOT, TENANT, free_port, point_at


@pytest.fixture(autouse=True)
def _fresh_breakers() -> Iterator[None]:
    forget_breakers()
    yield
    forget_breakers()


@pytest.fixture
def dead_url() -> str:
    """A loopback URL where nothing listens: every connection is refused."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def memorygate_down(settings, dead_url: str) -> str:
    point_at(settings, dead_url)
    return dead_url


class _EchoingRefusal(BaseHTTPRequestHandler):
    """Refuses every receipt with 422 and quotes the caller's credentials back, as careless
    servers do: once as the header it got, once as a bare JSON value."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        authorization = self.headers.get("Authorization", "")
        body = json.dumps(
            {
                "error": "invalid_receipt",
                "detail": f"refused a request sent with Authorization: {authorization}",
                "api_key": authorization.removeprefix("Bearer "),
            }
        ).encode()
        self.send_response(422)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def echoing_memorygate() -> Iterator[str]:
    """The base URL of a loopback server that answers every receipt with ``_EchoingRefusal``.

    The stub never echoes a request's headers, so the credential-scrubbing tests need this one.
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingRefusal)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def wire_payload(receipt_id: uuid.UUID, **overrides: Any) -> dict[str, Any]:
    payload = {
        "receipt_id": str(receipt_id),
        "tenant_id": str(TENANT),
        "receipt_type": "task.completed",
        "from": {"kind": "worker", "id": "w-1"},
        "to": {"kind": "service", "id": "asyncgate"},
        "body": {"ok": True},
        "created_at": "2025-01-01T00:00:00+00:00",
    }
    payload.update(overrides)
    return payload


@pytest.fixture
def buffered() -> Callable[..., list[BufferedReceipt]]:
    """Create ``n`` pending, due receipts with valid wire payloads (model-bakery)."""

    def make(n: int, **fields: Any) -> list[BufferedReceipt]:
        ids = [uuid.uuid4() for _ in range(n)]
        return baker.make(
            BufferedReceipt,
            _quantity=n,
            _bulk_create=True,
            receipt_id=iter(ids),
            tenant_id=TENANT,
            receipt_type="task.completed",
            payload=iter(wire_payload(rid) for rid in ids),
            status=fields.pop("status", ReceiptStatus.PENDING),
            **fields,
        )

    return make


def set_breaker_policy(**fields: Any) -> None:
    """Edit the seeded ``memorygate`` policy row (and forget cached breakers)."""
    BreakerPolicy.objects.update_or_create(name="memorygate", defaults=fields)
    forget_breakers()


def manage(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """Start ``python manage.py <args>`` in a child process with ``env``."""
    return subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "manage.py"), *args],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@pytest.fixture
def memorygate_env(child_env: dict[str, str], stub_memorygate: StubMemoryGate) -> dict[str, str]:
    """``child_env`` pointed at the (reset) stub, quiet logs.

    A roomy MemoryGate timeout: these tests are about delivery, and on a loaded two-core machine
    a drainer's request can wait longer than the production default for its share of the CPU.
    """
    env = dict(child_env)
    env.update(
        MEMORYGATE_URL=stub_memorygate.url,
        MEMORYGATE_API_KEY=stub_memorygate.api_key or "",
        MEMORYGATE_TIMEOUT_SECONDS="5",
        RESILIENCE_LOG_LEVEL="WARNING",
    )
    env.pop("REDIS_URL", None)
    return env
