"""The one way this app reaches Redis: sync and asyncio clients for a django-redis cache alias.

The sync client is django-redis's own (``get_redis_connection``), so the connection pool, Sentinel
or Cluster set-up and options of ``CACHES[alias]`` apply unchanged. django-redis has no asyncio
client (its async cache methods wrap the sync ones in a thread), so the async client is a
``redis.asyncio`` client built from the same ``LOCATION`` and socket options, one per event loop
because asyncio connections belong to the loop that opened them.

Lua scripts are registered once per client (``Script`` objects send ``EVALSHA`` and load the
script on ``NOSCRIPT``), so a check is one round trip in the steady state.

Redis errors are translated to ``BackendUnavailable`` by ``translate_errors`` at this edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import redis
import redis.asyncio
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django_redis import get_redis_connection

from resilience.exceptions import BackendUnavailable

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)

_sync_scripts: dict[tuple[int, str], Any] = {}
_async_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, redis.asyncio.Redis]
] = weakref.WeakKeyDictionary()


def get_sync_client(alias: str) -> redis.Redis:
    """django-redis's client for ``alias`` (its pooled connection to the primary)."""
    return get_redis_connection(alias)


def get_async_client(alias: str) -> redis.asyncio.Redis:
    """A ``redis.asyncio`` client for ``alias``, bound to the running event loop."""
    loop = asyncio.get_running_loop()
    clients = _async_clients.setdefault(loop, {})
    client = clients.get(alias)
    if client is None:
        client = clients[alias] = _build_async_client(alias)
    return client


def _build_async_client(alias: str) -> redis.asyncio.Redis:
    cache = settings.CACHES[alias]
    location = cache["LOCATION"]
    if isinstance(location, str):
        location = location.split(",")  # django-redis's own reading of a comma-separated string
    location = location[0]  # django-redis treats the first location as the primary
    options = cache.get("OPTIONS", {})
    # The pool options django-redis hands redis-py (ssl, retries, max_connections, ...) mean the
    # same to redis.asyncio; the explicit options below win, as they do in django-redis.
    kwargs: dict[str, Any] = dict(options.get("CONNECTION_POOL_KWARGS", {}))
    if "SOCKET_CONNECT_TIMEOUT" in options:
        kwargs["socket_connect_timeout"] = options["SOCKET_CONNECT_TIMEOUT"]
    if "SOCKET_TIMEOUT" in options:
        kwargs["socket_timeout"] = options["SOCKET_TIMEOUT"]
    if options.get("PASSWORD"):
        kwargs["password"] = options["PASSWORD"]
    return redis.asyncio.Redis.from_url(location, **kwargs)


def sync_script(alias: str, source: str):
    """The registered ``Script`` for ``source`` on the sync client of ``alias``."""
    client = get_sync_client(alias)
    key = (id(client), source)
    script = _sync_scripts.get(key)
    if script is None:
        script = _sync_scripts[key] = client.register_script(source)
    return script


def async_script(alias: str, source: str):
    """The registered ``AsyncScript`` for ``source`` on this loop's client of ``alias``."""
    client = get_async_client(alias)
    scripts = client.__dict__.setdefault("_resilience_scripts", {})
    script = scripts.get(source)
    if script is None:
        script = scripts[source] = client.register_script(source)
    return script


@contextlib.contextmanager
def translate_errors(alias: str) -> Iterator[None]:
    """Turn Redis connection trouble into ``BackendUnavailable`` naming the alias."""
    try:
        yield
    except REDIS_ERRORS as exc:
        raise BackendUnavailable(f"Redis for cache {alias!r} is unreachable: {exc}") from exc


@receiver(setting_changed)
def _forget_clients(*, setting: str, **kwargs: Any) -> None:
    if setting == "CACHES":
        _sync_scripts.clear()
        _async_clients.clear()
