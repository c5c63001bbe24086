"""The client works wherever Django code runs: a sync view under WSGI, an async view under ASGI
(uvicorn, and Django's ASGI handler in-process), a management command and the shell."""

import json
import subprocess
import sys

import httpx
import pytest
from asgiref.sync import async_to_sync

from resilience.models import BufferedReceipt, ReceiptStatus
from tests.conftest import PROJECT_ROOT, free_port
from tests.receipts.conftest import wait_for

API_KEY = "tenant-key"
TENANT_ID = "7b0c2f0e-57a4-4a34-9f0e-6a8a4b0a1c11"
TASK = {"task_type": "render.pdf", "payload": {"pages": 3}}


@pytest.fixture
def api_keys(settings):
    settings.ASYNCGATE_API_KEYS = {API_KEY: TENANT_ID}


@pytest.mark.django_db
@pytest.mark.urls("tests.receipts.urls")
def test_emit_receipt_sync__from_a_sync_view_under_wsgi(client, memorygate):
    delivered = client.post("/test/emit-sync", {"n": 1}, content_type="application/json").json()
    memorygate.set_faults(fail_next=1)
    buffered = client.post("/test/emit-sync", {"n": 2}, content_type="application/json").json()

    assert delivered["status"] == "delivered"
    assert memorygate.receipts()[delivered["receipt_id"]]["body"] == {"n": 1}
    assert buffered["status"] == "buffered"
    assert BufferedReceipt.objects.get().payload["body"] == {"n": 2}


@pytest.mark.django_db
def test_create_task__emits_task_assigned_and_says_delivered(client, memorygate, api_keys):
    response = client.post(
        "/v1/tasks", TASK, content_type="application/json", headers={"X-API-Key": API_KEY}
    )

    assert response.status_code == 202
    data = response.json()
    assert data["receipt"]["status"] == "delivered"
    stored = memorygate.receipts()[data["receipt"]["receipt_id"]]
    assert stored["receipt_type"] == "task.assigned"
    assert stored["task_id"] == data["task_id"]
    assert stored["from"] == {"kind": "service", "id": TENANT_ID}
    assert stored["to"] == {"kind": "system", "id": "asyncgate.queue"}
    assert stored["body"]["task_type"] == "render.pdf"


@pytest.mark.django_db
def test_create_task__says_buffered_when_memorygate_is_down(client, memorygate_down, api_keys):
    response = client.post(
        "/v1/tasks", TASK, content_type="application/json", headers={"X-API-Key": API_KEY}
    )

    assert response.status_code == 202
    receipt = response.json()["receipt"]
    assert receipt["status"] == "buffered"
    row = BufferedReceipt.objects.get(receipt_id=receipt["receipt_id"])
    assert row.status == ReceiptStatus.PENDING
    assert str(row.task_id) == response.json()["task_id"]


@pytest.mark.django_db
def test_create_task__async_view_through_the_asgi_handler(async_client, memorygate, api_keys):
    async def post_twice():
        headers = {"X-API-Key": API_KEY}
        first = await async_client.post(
            "/v1/tasks", TASK, content_type="application/json", headers=headers
        )
        second = await async_client.post(
            "/v1/tasks", TASK, content_type="application/json", headers=headers
        )
        return first, second

    responses = async_to_sync(post_twice)()

    ids = [r.json()["receipt"]["receipt_id"] for r in responses]
    assert [r.json()["receipt"]["status"] for r in responses] == ["delivered", "delivered"]
    assert set(memorygate.receipts()) == set(ids)


@pytest.mark.slow
def test_create_task__under_uvicorn(memorygate_env, stub_memorygate):
    port = free_port()
    env = {**memorygate_env, "ASYNCGATE_API_KEYS": f"{API_KEY}={TENANT_ID}"}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "asyncgate_site.asgi:application", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--lifespan", "off"],
        env=env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=10) as http:

            def up() -> bool:
                try:
                    return http.get("/v1/health").status_code in (200, 503)
                except httpx.TransportError:
                    return server.poll() is not None

            wait_for(up, timeout=30)
            assert server.poll() is None, server.stderr.read()
            headers = {"X-API-Key": API_KEY}
            delivered = [
                http.post("/v1/tasks", json=TASK, headers=headers).json() for _ in range(3)
            ]
            stub_memorygate.set_faults(fail_next=1, retry_after=5)
            buffered = http.post("/v1/tasks", json=TASK, headers=headers).json()
    finally:
        server.terminate()
        server.wait(timeout=10)

    assert [d["receipt"]["status"] for d in delivered] == ["delivered"] * 3
    assert set(stub_memorygate.receipts()) == {d["receipt"]["receipt_id"] for d in delivered}
    assert buffered["receipt"]["status"] == "buffered"
    row = BufferedReceipt.objects.get(receipt_id=buffered["receipt"]["receipt_id"])
    assert str(row.task_id) == buffered["task_id"]


EMIT_SCRIPT = """
import asyncio, json
from resilience.integrations import get_memorygate_client
fields = dict(
    tenant_id="7b0c2f0e-57a4-4a34-9f0e-6a8a4b0a1c11", receipt_type="task.completed",
    from_principal={"kind": "worker", "id": "w-1"}, to_principal={"kind": "service", "id": "ag"},
)
client = get_memorygate_client()
print(json.dumps([
    client.emit_receipt_sync(**fields, body={"via": "sync"}),
    asyncio.run(client.emit_receipt(**fields, body={"via": "async"})),
]))
"""


@pytest.mark.django_db
def test_emit_receipt__from_a_management_command(memorygate, capsys):
    from django.core.management import call_command

    call_command("shell", command=EMIT_SCRIPT)

    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["status"] for r in results] == ["delivered", "delivered"]
    bodies = [memorygate.receipts()[r["receipt_id"]]["body"] for r in results]
    assert bodies == [{"via": "sync"}, {"via": "async"}]


@pytest.mark.slow
def test_emit_receipt__from_the_shell(memorygate_env, stub_memorygate):
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", EMIT_SCRIPT],
        env=memorygate_env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["status"] for r in results] == ["delivered", "delivered"]
    assert set(stub_memorygate.receipts()) == {r["receipt_id"] for r in results}
