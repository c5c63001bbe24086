"""One ``Breaker`` per name per process, built from its ``BreakerPolicy`` row, kept in step with it.

* ``get_breaker(name)`` loads the row once per process (``aget_breaker`` does it through
  ``sync_to_async``), picks the store the settings ask for (Redis on ``RATE_LIMIT_CACHE_ALIAS``
  when ``RATE_LIMIT_BACKEND == "redis"``, with a refresh timeout of twice that cache's socket
  timeout; else memory) and caches the breaker. No row: the ``memorygate`` breaker runs on the
  ``MEMORYGATE_CIRCUIT_BREAKER_*`` defaults; any other name is a ``LookupError``. After that the
  call path never queries the database.
* A saved row reaches the running fleet without a restart: on commit its numbers are written to
  the breaker's store (the Redis hash, which every worker re-reads within ``snapshot_max_age``; or
  this process's memory store), leaving the breaker's state as it is. Redis unreachable at that
  moment, the store keeps the policy and writes it once Redis answers this process again;
  ``policy_unapplied(name)`` says whether one is waiting (the admin tells staff).
* Operator overrides are written to the row (for the admin) and to the store (for the fleet).
* Changing ``RESILIENCE`` or ``CACHES`` (tests) forgets every breaker; ``forget_breakers()`` does
  it explicitly for tests that want a fresh memory state.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.signals import setting_changed
from django.db import connections, transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from resilience.breaker.circuit import Breaker
from resilience.breaker.machine import Override, Policy
from resilience.breaker.stores.memory import MemoryStore
from resilience.breaker.stores.redis import DEFAULT_REFRESH_TIMEOUT, RedisStore
from resilience.conf import resilience_settings
from resilience.exceptions import BackendUnavailable
from resilience.signals import policy_rows_changed

logger = logging.getLogger("resilience.breaker")

MEMORYGATE = "memorygate"

_breakers: dict[str, Breaker] = {}
_lock = threading.Lock()


def policy_from_row(row: Any) -> Policy:
    """The ``Policy`` of a ``BreakerPolicy`` row (``ValueError`` naming a field out of range)."""
    return Policy(
        enabled=row.enabled,
        failure_threshold=row.failure_threshold,
        timeout_seconds=row.timeout_seconds,
        half_open_max_calls=row.half_open_max_calls,
        success_threshold=row.success_threshold,
        override=Override(row.override or ""),
    )


def policy_from_settings() -> Policy:
    """The ``memorygate`` defaults from ``RESILIENCE`` (the numbers that seed its row)."""
    return Policy(
        enabled=resilience_settings.MEMORYGATE_CIRCUIT_BREAKER_ENABLED,
        failure_threshold=resilience_settings.MEMORYGATE_CIRCUIT_BREAKER_FAILURE_THRESHOLD,
        timeout_seconds=resilience_settings.MEMORYGATE_CIRCUIT_BREAKER_TIMEOUT_SECONDS,
        half_open_max_calls=resilience_settings.MEMORYGATE_CIRCUIT_BREAKER_HALF_OPEN_MAX_CALLS,
        success_threshold=resilience_settings.MEMORYGATE_CIRCUIT_BREAKER_SUCCESS_THRESHOLD,
    )


def load_policy(name: str) -> Policy:
    """The policy of ``name`` from the database (sync; one query)."""
    from resilience.models import BreakerPolicy

    row = BreakerPolicy.objects.filter(name=name).first()
    if row is not None:
        return policy_from_row(row)
    if name == MEMORYGATE:
        return policy_from_settings()
    raise LookupError(
        f"No breaker policy named {name!r}. Add it in the admin (Resilience > Breaker policies); "
        f"only {MEMORYGATE!r} runs on the settings defaults without a row."
    )


def refresh_timeout(alias: str) -> float:
    """How long a snapshot refresh on cache ``alias`` may run before it counts as abandoned.

    Twice the longer of the cache's socket timeouts, which bound one attempt (connect, then
    read); a cache without both runs on ``DEFAULT_REFRESH_TIMEOUT``.
    """
    options = settings.CACHES.get(alias, {}).get("OPTIONS", {})
    connect, read = options.get("SOCKET_CONNECT_TIMEOUT"), options.get("SOCKET_TIMEOUT")
    if connect is None or read is None:
        return DEFAULT_REFRESH_TIMEOUT
    return 2 * max(float(connect), float(read))


def build_breaker(name: str, policy: Policy) -> Breaker:
    """A breaker on the store the settings choose (not cached; ``get_breaker`` caches)."""
    if resilience_settings.RATE_LIMIT_BACKEND == "redis":
        alias = resilience_settings.RATE_LIMIT_CACHE_ALIAS
        store: Any = RedisStore(name, policy, alias=alias, refresh_timeout=refresh_timeout(alias))
    else:
        store = MemoryStore(name, policy)
    return Breaker(name, store, persist_override=persist_override)


def _cache(name: str, policy: Policy) -> Breaker:
    with _lock:
        breaker = _breakers.get(name)
        if breaker is None:
            breaker = _breakers[name] = build_breaker(name, policy)
        return breaker


def _load_policy_in_thread(name: str) -> Policy:
    try:
        return load_policy(name)
    finally:
        connections.close_all()  # this thread's own connections: it ends now


def get_breaker(name: str) -> Breaker:
    """The process's breaker for the policy ``name``; loads the row on first use only.

    Called inside a running event loop, the one-off load runs in a helper thread (the ORM
    refuses to run on the loop); async code should prefer ``await aget_breaker(name)``.
    """
    breaker = _breakers.get(name)
    if breaker is not None:
        return breaker
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        policy = load_policy(name)
    else:
        with ThreadPoolExecutor(max_workers=1) as pool:
            policy = pool.submit(_load_policy_in_thread, name).result()
    return _cache(name, policy)


async def aget_breaker(name: str) -> Breaker:
    """``get_breaker`` for async code: the one-off load goes through ``sync_to_async``."""
    breaker = _breakers.get(name)
    if breaker is not None:
        return breaker
    policy = await sync_to_async(load_policy)(name)
    return _cache(name, policy)


def forget_breakers() -> None:
    """Drop every cached breaker of this process (shared Redis state is untouched)."""
    with _lock:
        _breakers.clear()


def persist_override(name: str, override: Override) -> None:
    """Record an override on the row so the admin shows it and new processes start with it."""
    from resilience.models import BreakerPolicy

    BreakerPolicy.objects.filter(name=name).update(
        override=str(override), updated_at=timezone.now()
    )


def apply_policy(name: str, policy: Policy) -> bool:
    """Push a saved policy to the store of ``name`` (the fleet, with Redis), state untouched.

    False: the store is unreachable; it keeps the policy and delivers it later.
    """
    breaker = _cache(name, policy)
    try:
        breaker.store.configure(policy)
    except BackendUnavailable as exc:
        logger.error(
            "Breaker policy %r was saved but its store is unreachable (%s); running workers keep "
            "the previous numbers until this process reaches Redis again and writes it.",
            name,
            exc,
        )
        return False
    logger.info("Breaker policy %r applied: %s.", name, policy.as_dict())
    return True


def policy_unapplied(name: str) -> bool:
    """True while a saved policy of ``name`` waits in this process for its store to answer."""
    breaker = _breakers.get(name)
    return breaker is not None and breaker.store.unapplied_policy is not None


@receiver(post_save, sender="resilience.BreakerPolicy", dispatch_uid="resilience.breaker.saved")
def _policy_saved(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    try:
        policy = policy_from_row(instance)
    except ValueError as exc:
        logger.error("Breaker policy %r not applied: %s", instance.name, exc)
        return
    name = instance.name
    transaction.on_commit(lambda: apply_policy(name, policy), using=using)


@receiver(
    policy_rows_changed, sender="resilience.BreakerPolicy", dispatch_uid="resilience.breaker.bulk"
)
def _policies_changed_in_bulk(sender: Any, using: str, pks: list, **kwargs: Any) -> None:
    def apply_all() -> None:
        for row in sender._default_manager.using(using).filter(pk__in=pks):
            _policy_saved(sender, row, using)

    transaction.on_commit(apply_all, using=using)


@receiver(post_delete, sender="resilience.BreakerPolicy", dispatch_uid="resilience.breaker.deleted")
def _policy_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    with _lock:
        _breakers.pop(instance.name, None)


@receiver(setting_changed, dispatch_uid="resilience.breaker.settings")
def _forget_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in ("RESILIENCE", "CACHES"):
        forget_breakers()
