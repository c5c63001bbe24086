"""The stub MemoryGate over real HTTP: the wire contract, injected faults and the control API.

Other suites trust this server to tell them whether a receipt arrived once, so its own answers are
checked here first. Nothing touches the database.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from resilience.testing.stub_memorygate import parse_args
from resilience.testing.stub_process import StubMemoryGate, StubMemoryGateError

API_KEY = "test-key"
TIMEOUT = httpx.Timeout(5.0)
_OMIT: Any = object()


def make_receipt(**overrides: Any) -> dict[str, Any]:
    receipt: dict[str, Any] = {
        "receipt_id": str(uuid.uuid4()),
        "tenant_id": str(uuid.uuid4()),
        "receipt_type": "task.completed",
        "from": {"kind": "worker", "id": "worker-7"},
        "to": {"kind": "agent", "id": "planner"},
        "task_id": str(uuid.uuid4()),
        "lease_id": None,
        "body": {"result": "ok"},
        "created_at": "2025-01-01T12:00:00+00:00",
    }
    receipt.update(overrides)
    return receipt


def post_receipt(
    client: httpx.Client,
    receipt: Any,
    *,
    api_key: str | None = API_KEY,
    idempotency_key: str | None = _OMIT,
    content: bytes | None = None,
) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    if idempotency_key is _OMIT:
        idempotency_key = receipt["receipt_id"]
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    if content is None:
        content = json.dumps(receipt).encode()
    return client.post("/v1/receipts", content=content, headers=headers)


def connection_of(response: httpx.Response) -> tuple[str, int]:
    """The client's end of the TCP connection that carried ``response``."""
    return response.extensions["network_stream"].get_extra_info("client_addr")


@pytest.fixture
def stub_http(stub_memorygate: StubMemoryGate) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stub_memorygate.url, timeout=TIMEOUT, trust_env=False) as client:
        yield client


def test_stub__stores_receipt_on_first_post(
    stub_memorygate: StubMemoryGate, stub_http: httpx.Client
) -> None:
    receipt = make_receipt()

    response = post_receipt(stub_http, receipt)

    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"receipt_id": receipt["receipt_id"], "status": "stored"}
    assert stub_memorygate.receipts() == {receipt["receipt_id"]: receipt}


def test_stub__duplicate_receipt_id_is_409_and_stored_once(
    stub_memorygate: StubMemoryGate, stub_http: httpx.Client
) -> None:
    receipt = make_receipt()
    post_receipt(stub_http, receipt)

    again = post_receipt(stub_http, {**receipt, "body": {"result": "overwritten?"}})

    assert again.status_code == 409
    assert again.headers["content-type"] == "application/json"
    assert again.json()["receipt_id"] == receipt["receipt_id"]
    assert stub_memorygate.receipts() == {receipt["receipt_id"]: receipt}
    stats = stub_memorygate.stats()
    assert (stats["received"], stats["stored"], stats["duplicates"]) == (2, 1, 1)
    assert stats["by_status"] == {"201": 1, "409": 1}


def test_stub__receipt_ids_are_compared_as_uuids(stub_http: httpx.Client) -> None:
    receipt = make_receipt()
    post_receipt(stub_http, receipt)
    shouting = receipt["receipt_id"].upper()

    response = post_receipt(stub_http, {**receipt, "receipt_id": shouting})

    assert response.status_code == 409


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-key", f"Basic {API_KEY}", "Bearer"],
    ids=["missing", "wrong-key", "wrong-scheme", "empty-token"],
)
def test_stub__bad_or_missing_key_is_401(
    stub_memorygate: StubMemoryGate, stub_http: httpx.Client, authorization: str | None
) -> None:
    receipt = make_receipt()
    headers = {"Idempotency-Key": receipt["receipt_id"]}
    if authorization is not None:
        headers["Authorization"] = authorization

    response = stub_http.post("/v1/receipts", json=receipt, headers=headers)

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == "unauthorized"
    assert stub_memorygate.receipts() == {}


def test_stub__without_a_key_accepts_unauthenticated_receipts() -> None:
    with (
        StubMemoryGate.start(api_key=None) as stub,
        httpx.Client(base_url=stub.url, timeout=TIMEOUT, trust_env=False) as client,
    ):
        response = post_receipt(client, make_receipt(), api_key=None)

        assert stub.api_key is None
        assert response.status_code == 201


@pytest.mark.parametrize(
    "idempotency_key",
    [None, "", str(uuid.uuid4()), "not-a-uuid"],
    ids=["missing", "empty", "other-uuid", "not-a-uuid"],
)
def test_stub__idempotency_key_missing_or_not_the_receipt_id_is_400(
    stub_memorygate: StubMemoryGate, stub_http: httpx.Client, idempotency_key: str | None
) -> None:
    response = post_receipt(stub_http, make_receipt(), idempotency_key=idempotency_key)

    assert response.status_code == 400
    assert response.json()["field"] == "Idempotency-Key"
    assert stub_memorygate.receipts() == {}


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b'{"receipt_id": NaN}', b"\xff\xfe"],
    ids=["broken", "empty", "nan", "not-utf8"],
)
def test_stub__malformed_json_is_400(stub_http: httpx.Client, content: bytes) -> None:
    response = post_receipt(stub_http, make_receipt(), content=content)

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == "malformed_json"


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("receipt_id", {"receipt_id": "not-a-uuid"}),
        ("tenant_id", {"tenant_id": 42}),
        ("tenant_id", {"tenant_id": _OMIT}),
        ("receipt_type", {"receipt_type": "task.exploded"}),
        ("from", {"from": "worker-7"}),
        ("from.kind", {"from": {"kind": "robot", "id": "r2"}}),
        ("to.id", {"to": {"kind": "agent", "id": " "}}),
        ("to.name", {"to": {"kind": "agent", "id": "planner", "name": "P"}}),
        ("task_id", {"task_id": "nope"}),
        ("lease_id", {"lease_id": 7}),
        ("body", {"body": ["not", "an", "object"]}),
        ("created_at", {"created_at": "yesterday"}),
        ("created_at", {"created_at": 1735732800}),
        ("colour", {"colour": "blue"}),
    ],
)
def test_stub__schema_violation_is_422_naming_the_field(
    stub_memorygate: StubMemoryGate,
    stub_http: httpx.Client,
    field: str,
    changes: dict[str, Any],
) -> None:
    receipt = make_receipt(**changes)
    receipt = {name: value for name, value in receipt.items() if value is not _OMIT}

    response = post_receipt(stub_http, receipt)

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert response.json()["field"] == field
    assert stub_memorygate.receipts() == {}


def test_stub__body_that_is_not_an_object_is_422(stub_http: httpx.Client) -> None:
    response = post_receipt(
        stub_http, [make_receipt()], idempotency_key=str(uuid.uuid4()), content=b"[1, 2]"
    )

    assert response.status_code == 422
    assert response.json()["field"] is None


def test_stub__oversized_body_is_413_and_the_connection_survives(
    stub_memorygate: StubMemoryGate, stub_http: httpx.Client
) -> None:
    huge = make_receipt(body={"blob": "x" * 70_000})

    refused = post_receipt(stub_http, huge)
    after = post_receipt(stub_http, make_receipt())

    assert refused.status_code == 413
    assert refused.headers["content-type"] == "application/json"
    assert after.status_code == 201
    assert connection_of(refused) == connection_of(after)
    assert huge["receipt_id"] not in stub_memorygate.receipts()


def test_stub__fail_next_answers_fail_status_with_retry_after(
    stub_memorygate: StubMemoryGate, stub_http: httpx.Client
) -> None:
    stub_memorygate.set_faults(fail_next=2, fail_status=503, retry_after=7)
    receipts = [make_receipt() for _ in range(3)]

    responses = [post_receipt(stub_http, receipt) for receipt in receipts]

    assert [r.status_code for r in responses] == [503, 503, 201]
    assert [r.headers.get("retry-after") for r in responses] == ["7", "7", None]
    assert responses[0].headers["content-type"] == "application/json"
    assert list(stub_memorygate.receipts()) == [receipts[2]["receipt_id"]]
    assert stub_memorygate.faults()["fail_next"] == 0


def test_stub__fault_comes_before_auth(
    stub_memorygate: StubMemoryGate, stub_http: httpx.Client
) -> None:
    stub_memorygate.set_faults(fail_next=1, fail_status=500)

    response = post_receipt(stub_http, make_receipt(), api_key="wrong")

    assert response.status_code == 500


def test_stub__fail_rate_one_fails_every_receipt(
    stub_memorygate: StubMemoryGate, stub_http: httpx.Client
) -> None:
    stub_memorygate.set_faults(fail_rate=1.0, fail_status=429)

    statuses = [post_receipt(stub_http, make_receipt()).status_code for _ in range(5)]
    stub_memorygate.set_faults(fail_rate=0)
    recovered = post_receipt(stub_http, make_receipt())

    assert statuses == [429] * 5
    assert recovered.status_code == 201
    assert stub_memorygate.stats()["stored"] == 1


def test_stub__latency_delays_the_answer_but_not_the_store(
    stub_memorygate: StubMemoryGate, stub_http: httpx.Client
) -> None:
    stub_memorygate.set_faults(latency_ms=250)
    receipt = make_receipt()

    with (
        httpx.Client(base_url=stub_memorygate.url, timeout=0.05, trust_env=False) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        post_receipt(impatient, receipt)
    started = time.monotonic()
    retried = post_receipt(stub_http, receipt)
    elapsed = time.monotonic() - started

    assert elapsed >= 0.25
    assert retried.status_code == 409
    assert list(stub_memorygate.receipts()) == [receipt["receipt_id"]]


def test_stub__latency_does_not_hold_up_other_connections(
    stub_memorygate: StubMemoryGate, stub_http: httpx.Client
) -> None:
    stub_memorygate.set_faults(latency_ms=300)

    started = time.monotonic()
    health = stub_http.get("/v1/health")

    assert health.status_code == 200
    assert time.monotonic() - started < 0.3


def test_stub__drop_next_closes_the_connection_without_answering(
    stub_memorygate: StubMemoryGate, stub_http: httpx.Client
) -> None:
    stub_memorygate.set_faults(drop_next=1)
    dropped = make_receipt()

    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        post_receipt(stub_http, dropped)
    after = post_receipt(stub_http, make_receipt())

    assert after.status_code == 201
    assert dropped["receipt_id"] not in stub_memorygate.receipts()
    stats = stub_memorygate.stats()
    assert (stats["received"], stats["dropped"], stats["stored"]) == (2, 1, 1)
    assert stats["by_status"] == {"201": 1}


def test_stub__drop_rate_one_drops_every_receipt(
    stub_memorygate: StubMemoryGate, stub_http: httpx.Client
) -> None:
    stub_memorygate.set_faults(drop_rate=1.0)

    for _ in range(3):
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            post_receipt(stub_http, make_receipt())

    assert stub_memorygate.stats()["dropped"] == 3
    assert stub_memorygate.receipts() == {}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("fail_next", -1),
        ("fail_next", "3"),
        ("fail_next", True),
        ("fail_status", 200),
        ("fail_status", 600),
        ("fail_rate", 1.5),
        ("drop_rate", -0.1),
        ("drop_next", 1.5),
        ("latency_ms", -5),
        ("retry_after", "soon"),
        ("explode", 1),
    ],
)
def test_stub__invalid_fault_is_400_and_changes_nothing(
    stub_memorygate: StubMemoryGate, stub_http: httpx.Client, field: str, value: Any
) -> None:
    stub_memorygate.set_faults(fail_status=502, latency_ms=1)
    before = stub_memorygate.faults()

    response = stub_http.post("/_stub/faults", json={"fail_next": 2, field: value})

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["field"] == field
    assert stub_memorygate.faults() == before
    with pytest.raises(ValueError, match=field):
        stub_memorygate.set_faults(**{field: value})


def test_stub__faults_can_be_read_and_cleared(
    stub_memorygate: StubMemoryGate, stub_http: httpx.Client
) -> None:
    stub_memorygate.set_faults(fail_next=3, retry_after=2)

    shown = stub_http.get("/_stub/faults").json()
    cleared = stub_http.delete("/_stub/faults")

    assert (shown["fail_next"], shown["retry_after"], shown["fail_status"]) == (3, 2, 503)
    assert cleared.status_code == 200
    assert stub_memorygate.faults() == {
        "fail_next": 0,
        "fail_status": 503,
        "fail_rate": 0.0,
        "latency_ms": 0,
        "drop_next": 0,
        "drop_rate": 0.0,
        "retry_after": None,
    }


def test_stub__counts_receipt_answers_by_status(
    stub_memorygate: StubMemoryGate, stub_http: httpx.Client
) -> None:
    stored = make_receipt()
    post_receipt(stub_http, stored)
    post_receipt(stub_http, stored)
    post_receipt(stub_http, make_receipt(), api_key="wrong")
    post_receipt(stub_http, make_receipt(receipt_type="nope"))
    post_receipt(stub_http, make_receipt(), idempotency_key=str(uuid.uuid4()))
    stub_memorygate.set_faults(fail_next=1, drop_next=1)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        post_receipt(stub_http, make_receipt())
    post_receipt(stub_http, make_receipt())
    stub_http.get("/v1/health")
    stub_http.get("/v1/receipts")

    assert stub_memorygate.stats() == {
        "received": 7,
        "stored": 1,
        "duplicates": 1,
        "dropped": 1,
        "by_status": {"201": 1, "400": 1, "401": 1, "409": 1, "422": 1, "503": 1},
    }


def test_stub__reset_clears_receipts_counters_and_faults(
    stub_memorygate: StubMemoryGate, stub_http: httpx.Client
) -> None:
    post_receipt(stub_http, make_receipt())
    stub_memorygate.set_faults(fail_rate=0.5, latency_ms=10)

    stub_memorygate.reset()

    assert stub_memorygate.receipts() == {}
    assert stub_memorygate.stats() == {
        "received": 0,
        "stored": 0,
        "duplicates": 0,
        "dropped": 0,
        "by_status": {},
    }
    assert stub_memorygate.faults()["fail_rate"] == 0.0
    assert post_receipt(stub_http, make_receipt()).status_code == 201


def test_stub__keep_alive_serves_many_requests_on_one_connection(
    stub_memorygate: StubMemoryGate, stub_http: httpx.Client
) -> None:
    responses = [post_receipt(stub_http, make_receipt()) for _ in range(5)]
    responses.append(stub_http.get("/v1/health"))
    responses.append(post_receipt(stub_http, make_receipt(), content=b"{"))

    assert [r.status_code for r in responses] == [201] * 5 + [200, 400]
    assert len({connection_of(r) for r in responses}) == 1
    assert all(r.headers["connection"] == "keep-alive" for r in responses)
    assert stub_memorygate.stats()["stored"] == 5


def test_stub__pipelined_requests_are_answered_in_order(
    stub_memorygate: StubMemoryGate,
) -> None:
    stub_memorygate.set_faults(latency_ms=150)
    receipt = make_receipt()
    body = json.dumps(receipt).encode()
    delayed_post = (
        f"POST /v1/receipts HTTP/1.1\r\nHost: stub\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Idempotency-Key: {receipt['receipt_id']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    quick_get = b"GET /v1/health HTTP/1.1\r\nHost: stub\r\n\r\n"
    host, port = stub_memorygate.url.removeprefix("http://").split(":")

    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(delayed_post + quick_get)
        replies = _read_responses(sock, count=2)

    assert [(status, payload.get("status")) for status, payload in replies] == [
        (201, "stored"),
        (200, "ok"),
    ]


def test_stub__garbage_on_the_wire_is_400_and_closed(stub_memorygate: StubMemoryGate) -> None:
    host, port = stub_memorygate.url.removeprefix("http://").split(":")

    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        [(status, payload)] = _read_responses(sock, count=1)
        closed = sock.recv(1) == b""

    assert status == 400
    assert payload["error"] == "bad_request"
    assert closed


def test_stub__unknown_path_is_404_and_wrong_method_is_405(stub_http: httpx.Client) -> None:
    missing = stub_http.get("/v1/nothing-here")
    wrong_method = stub_http.get("/v1/receipts")

    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert wrong_method.headers["content-type"] == "application/json"


def test_stub__health_is_200(stub_http: httpx.Client) -> None:
    response = stub_http.get("/v1/health?probe=1")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_stub__stop_exits_cleanly_and_kill_is_abrupt() -> None:
    with StubMemoryGate.start() as stopped, StubMemoryGate.start() as killed:
        stopped.stop()
        killed.kill()

        assert stopped.returncode == 0
        assert killed.returncode == -9
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{killed.url}/v1/health", timeout=TIMEOUT, trust_env=False)


def test_stub__start_failure_quotes_the_servers_stderr() -> None:
    with pytest.raises(StubMemoryGateError, match="cannot listen"):
        StubMemoryGate.start(host="256.0.0.1")


def test_stub__api_key_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMORYGATE_API_KEY", "from-env")

    assert parse_args([]).api_key == "from-env"
    assert parse_args(["--api-key", "given"]).api_key == "given"
    assert parse_args(["--api-key", ""]).api_key is None


def _read_responses(sock: socket.socket, count: int) -> list[tuple[int, dict[str, Any]]]:
    """Read ``count`` JSON responses off one socket, in the order they arrive."""
    stream = sock.makefile("rb")
    replies = []
    for _ in range(count):
        status = int(stream.readline().split()[1])
        length = 0
        while (line := stream.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        replies.append((status, json.loads(stream.read(length))))
    return replies
