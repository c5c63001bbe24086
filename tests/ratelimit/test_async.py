"""The async path: async views through AsyncClient and a bare ASGI handler, no blocking I/O.

The sync Redis client is made to fail loudly during these tests, so a request that reached Redis
at all reached it through ``redis.asyncio``.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.db import connections
from django.test import AsyncClient

from resilience import registry as registry_module
from resilience.ratelimit.backends import redis as redis_backend_module
from tests.ratelimit.conftest import configure, use_settings

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("close_loader_connections")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def close_loader_connections():
    """The registry loads rows in asgiref's sync thread; close that thread's connection after."""
    yield
    await sync_to_async(connections.close_all, thread_sensitive=True)()


@pytest.fixture
def no_sync_redis(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the async path used the blocking Redis client")

    monkeypatch.setattr(redis_backend_module, "sync_script", refuse)
    monkeypatch.setattr(registry_module, "get_sync_client", refuse)


async def test_middleware__async_view_is_limited_without_blocking_io(
    backend, transactional_db, no_sync_redis, async_client
):
    configure(path="/t/async", calls=2, window_seconds=60, name="async-two")
    responses = [await async_client.get("/t/async") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[0].content == b"async"
    assert responses[0]["X-RateLimit-Remaining"] == "1"
    assert json.loads(responses[2].content)["rule"] == "async-two"
    assert responses[2]["Retry-After"] in ("59", "60")


async def test_middleware__sync_view_under_asgi(
    backend, transactional_db, no_sync_redis, async_client
):
    configure(path="/t/sync", calls=1, window_seconds=60)
    assert [(await async_client.get("/t/sync")).status_code for _ in range(2)] == [200, 429]


async def test_rate_limit_decorator__limits_an_async_view_by_api_key(
    backend, transactional_db, no_sync_redis, async_client
):
    key = {"X-API-Key": "client-1"}
    statuses = [
        (await async_client.post("/t/adecorated", headers=key)).status_code for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    assert (
        await async_client.post("/t/adecorated", headers={"X-API-Key": "client-2"})
    ).status_code == 200
    # The decorator limits POST only.
    assert (await async_client.get("/t/adecorated", headers=key)).status_code == 200


async def asgi_get(app, path: str, client_ip: str) -> tuple[int, dict[bytes, bytes], bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": (client_ip, 40000),
        "server": ("testserver", 80),
    }
    messages = [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[dict] = []

    finished = asyncio.Event()

    async def receive():
        if messages:
            return messages.pop(0)
        await finished.wait()  # a client that stays until the response is complete
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            finished.set()

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


async def test_middleware__bare_asgi_handler_keys_by_client_address(
    limiting, redis_backend, transactional_db, no_sync_redis, settings
):
    use_settings(settings, RATE_LIMIT_BACKEND="redis")
    settings.ALLOWED_HOSTS = ["testserver"]
    configure(path="/t/async", calls=1, window_seconds=60)
    app = ASGIHandler()
    first = await asgi_get(app, "/t/async", "192.0.2.10")
    second = await asgi_get(app, "/t/async", "192.0.2.10")
    other = await asgi_get(app, "/t/async", "192.0.2.11")
    assert (first[0], second[0], other[0]) == (200, 429, 200)
    assert first[1][b"X-RateLimit-Limit"] == b"1"
    assert second[1][b"Retry-After"] in (b"59", b"60")


AUTH_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "resilience.middleware.RateLimitMiddleware",
]


async def test_middleware__async_user_key_counts_per_logged_in_user(
    backend, transactional_db, settings, django_user_model
):
    """Under ASGI the user comes from ``request.auser()``: ``request.user`` would query the
    session synchronously inside the event loop, which Django refuses with a 500."""
    settings.MIDDLEWARE = AUTH_MIDDLEWARE
    configure(path="/t/async", calls=2, window_seconds=60, key="user")
    create_user = sync_to_async(django_user_model.objects.create_user)
    bob, eve = await create_user("bob", password="pw"), await create_user("eve", password="pw")
    clients = []
    for user in (bob, eve):
        client = AsyncClient(raise_request_exception=False)
        await client.aforce_login(user)
        clients.append(client)
    statuses = [(await clients[0].get("/t/async")).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert (await clients[1].get("/t/async")).status_code == 200


async def test_middleware__async_user_key_with_a_forged_session_falls_back_to_ip(
    backend, transactional_db, settings
):
    settings.MIDDLEWARE = AUTH_MIDDLEWARE
    configure(path="/t/async", calls=1, window_seconds=60, key="user_or_ip")
    client = AsyncClient(raise_request_exception=False)
    client.cookies["sessionid"] = "a" * 32
    assert [(await client.get("/t/async")).status_code for _ in range(2)] == [200, 429]
