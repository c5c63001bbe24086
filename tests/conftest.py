"""Fixtures shared by the whole suite.

Redis: tests that need sharing or atomicity talk to the real server named by ``TEST_REDIS_URL``
(default ``redis://127.0.0.1:6379/15``, a database the suite owns and flushes). Tests that stop
Redis get a ``private_redis`` server of their own on a free port; the shared one is never stopped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from django.contrib.contenttypes.models import ContentType

from resilience.conf import resilience_settings
from resilience.testing.stub_process import StubMemoryGate

pytest_plugins = ["resilience.testing.fixtures"]

# The tenant of every receipt the tests emit unless they say otherwise.
TENANT = uuid.UUID("11111111-2222-4333-8444-555555555555")

# Nothing on disk: a test server is thrown away with its test.
PRIVATE_REDIS_ARGS = ("--save", "", "--appendonly", "no")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_cache_settings(url: str) -> dict:
    return {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": url,
            # Generous: two cores run the suite, its worker processes and Redis at once. A stopped
            # server still fails at once (connection refused), so fail-open tests stay fast.
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 2},
        }
    }


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        parts = urlsplit(TEST_REDIS_URL)
        pytest.fail(
            f"Redis is not reachable at {parts.hostname}:{parts.port} ({exc}). Start it "
            "(`make test` does) or set TEST_REDIS_URL.",
            pytrace=False,
        )
    finally:
        client.close()
    return TEST_REDIS_URL


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the suite's own Redis database, flushed before and after the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def redis_backend(redis_client: redis.Redis, redis_url: str, settings) -> Iterator[str]:
    """Settings with the default cache on django-redis and the rate-limit backend on Redis."""
    settings.CACHES = redis_cache_settings(redis_url)
    settings.RESILIENCE = {**settings.RESILIENCE, "RATE_LIMIT_BACKEND": "redis"}
    resilience_settings.reload()
    yield redis_url
    resilience_settings.reload()


class PrivateRedis:
    """A ``redis-server`` owned by one test, on a free port, that the test may stop and restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server).")
        self.process = subprocess.Popen(
            [executable, "--port", str(self.port), "--bind", "127.0.0.1", *PRIVATE_REDIS_ARGS],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)
            finally:
                client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_redis_backend(private_redis: PrivateRedis, settings) -> Iterator[PrivateRedis]:
    """Like ``redis_backend``, but on a server the test may stop.

    Through pytest-django's ``settings`` like ``redis_backend``, so whatever else the test changes
    there is restored in one place and no later test inherits the stopped server.
    """
    settings.CACHES = redis_cache_settings(private_redis.url)
    settings.RESILIENCE = {**settings.RESILIENCE, "RATE_LIMIT_BACKEND": "redis"}
    resilience_settings.reload()
    yield private_redis
    resilience_settings.reload()


@pytest.fixture(autouse=True)
def _fresh_content_types() -> Iterator[None]:
    """Transactional tests flush the database; a cached ContentType id would then be stale."""
    yield
    ContentType.objects.clear_cache()


def database_url_for_children() -> str:
    """A ``DATABASE_URL`` that points a child process at the test database this test uses."""
    from django.db import connection

    conf = connection.settings_dict
    if conf["ENGINE"] == "django.db.backends.sqlite3":
        name = str(conf["NAME"])
        if name == ":memory:" or name.startswith("file:"):
            raise RuntimeError("Child processes need a file SQLite test database.")
        return f"sqlite:///{os.path.abspath(name)}"
    auth = conf["USER"] + (f":{conf['PASSWORD']}" if conf["PASSWORD"] else "")
    return f"postgres://{auth}@{conf['HOST'] or '127.0.0.1'}:{conf['PORT'] or 5432}/{conf['NAME']}"


@pytest.fixture
def child_env(transactional_db) -> dict[str, str]:
    """Environment for worker processes a test starts: same settings, same test database.

    Rows a child must see are committed, hence ``transactional_db``.
    """
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="asyncgate_site.settings",
        DATABASE_URL=database_url_for_children(),
        PYTHONPATH=str(PROJECT_ROOT),
        SECRET_KEY="child-process-test-key",
    )
    return env


def point_at(settings, url: str | None, api_key: str | None = "test-key", **extra: Any) -> None:
    """Point ``RESILIENCE`` at a MemoryGate (``None``: unset), with any other keys in ``extra``."""
    settings.RESILIENCE = {
        **settings.RESILIENCE,
        "MEMORYGATE_URL": url,
        "MEMORYGATE_API_KEY": api_key,
        **extra,
    }
    resilience_settings.reload()


@pytest.fixture
def memorygate(stub_memorygate: StubMemoryGate, settings) -> StubMemoryGate:
    """The session's stub, reset, with ``RESILIENCE`` pointing at it."""
    point_at(settings, stub_memorygate.url, stub_memorygate.api_key)
    return stub_memorygate


@pytest.fixture
def receipt_fields() -> Callable[..., dict[str, Any]]:
    """Valid ``emit_receipt`` keyword arguments; override any of them."""

    def make(**overrides: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "tenant_id": TENANT,
            "receipt_type": "task.assigned",
            "from_principal": {"kind": "service", "id": f"tenant:{TENANT}"},
            "to_principal": {"kind": "system", "id": "asyncgate.queue"},
            "task_id": uuid.uuid4(),
            "body": {"task_type": "render", "n": 1},
        }
        fields.update(overrides)
        return fields

    return make
