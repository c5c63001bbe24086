"""The in-process, immutable snapshot of rate-limit rules, and how every process keeps it fresh.

The request path reads rules from a ``RuleSet`` snapshot held in this process: no database query
and, most of the time, no Redis command beyond the limiter's own script. The snapshot merges
database rules (``RateLimitRule`` rows) with rules declared in code (``configure_endpoint``) and
the default limit from settings; see ``resilience.ratelimit.rules`` for precedence.

Cross-process invalidation is a generation counter:

* Saving or deleting a ``RateLimitRule`` (admin form, list edit, delete, shell) sends
  ``post_save`` / ``post_delete``; the receivers below call ``rules_changed()``.
* ``QuerySet.update()``, ``bulk_create`` and ``bulk_update`` send no ``post_save``; the rules'
  queryset sends ``policy_rows_changed`` instead, which lands in the same receiver.
* ``rules_changed()`` runs on commit: it marks this process's snapshot stale and, with the
  ``redis`` backend, ``INCR``\\s the generation key in Redis.
* Every process reads that key at most every ``POLL_SECONDS`` (0.5 s), on the first request after
  the interval, and reloads rules from the database when it changed. A change is therefore in force
  in every worker for every request that starts more than 0.5 s after the commit, at the cost of one
  ``GET`` per process per half second rather than per request. (Reading the generation inside the
  limiter's script would save even that, but the generation key cannot share a Redis Cluster hash
  slot with every client's counters, and the script must stay Cluster-safe.)
* With the ``memory`` backend there is no shared store: the generation is this process's own,
  which is right for the single process that backend serves.
* The same poll carries this process's rate-limit tallies (``resilience.ratelimit.stats``): the
  ``GET`` becomes a pipeline that also adds them to per-minute buckets, so operators' counts cost
  no extra round trip; with the ``memory`` backend they go to this process's buckets.
* Whatever the backend, a snapshot older than ``MAX_AGE_SECONDS`` is reloaded: a safety net for a
  bump lost while Redis was unreachable.

A failed reload (database down, table not migrated yet) keeps the previous rules, logs, and is
retried at the next poll; the request is never failed for it. The async entry point reads the
generation through ``redis.asyncio`` and loads rows through ``sync_to_async``, so it never blocks
the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import redis
from asgiref.sync import sync_to_async
from django.core.signals import setting_changed
from django.db import DatabaseError, transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from resilience.conf import resilience_settings
from resilience.exceptions import BackendUnavailable
from resilience.models import RateLimitRule
from resilience.ratelimit import stats
from resilience.ratelimit.rules import Rule, RuleSet, parse_methods
from resilience.redis import REDIS_ERRORS, get_async_client, get_sync_client, translate_errors
from resilience.signals import policy_rows_changed

logger = logging.getLogger("resilience.ratelimit")

GENERATION_KEY = "rl:generation"
POLL_SECONDS = 0.5
MAX_AGE_SECONDS = 300.0
DB_FAILURE_LOG_INTERVAL = 60.0


def rule_from_row(row: RateLimitRule) -> Rule:
    return Rule(
        name=row.name,
        path=row.path,
        calls=row.calls,
        window_seconds=row.window_seconds,
        key=row.key,
        algorithm=row.algorithm,
        mode=row.mode,
        methods=parse_methods(row.methods),
        key_prefix=row.key_prefix,
        source="db",
    )


def default_rule() -> Rule | None:
    calls = resilience_settings.RATE_LIMIT_DEFAULT_CALLS
    if calls is None:
        return None
    return Rule(
        name="default",
        path="/*",
        calls=calls,
        window_seconds=resilience_settings.RATE_LIMIT_DEFAULT_WINDOW_SECONDS,
        source="default",
    )


class RuleRegistry:
    """Holds the current ``RuleSet`` of this process and knows when to rebuild it."""

    def __init__(self) -> None:
        # Keyed by (path, name): the same name on another path is another rule (two endpoints
        # may share a key_prefix, hence a default name, and a counter).
        self._code_rules: dict[tuple[str, str], Rule] = {}
        self._db_rules: tuple[Rule, ...] = ()
        self._snapshot: RuleSet | None = None
        self._stale = True
        self._load_failed = False
        self._seen_generation: int | None = None
        self._next_poll = 0.0
        self._loaded_at = 0.0
        self._last_db_log = -DB_FAILURE_LOG_INTERVAL
        # A try-lock marks "a refresh is in progress": other requests keep using the current
        # snapshot instead of waiting on a network call.
        self._refreshing = threading.Lock()

    # Code rules -----------------------------------------------------------------------------

    def add_code_rule(self, rule: Rule) -> None:
        self._code_rules[rule.path, rule.name] = rule
        self._rebuild()

    def remove_code_rules(self, path: str | None = None) -> None:
        """Forget code rules on ``path`` (all of them when ``path`` is None)."""
        if path is None:
            self._code_rules.clear()
        else:
            self._code_rules = {k: r for k, r in self._code_rules.items() if r.path != path}
        self._rebuild()

    @property
    def code_rules(self) -> tuple[Rule, ...]:
        return tuple(self._code_rules.values())

    def _rebuild(self) -> None:
        if self._snapshot is not None:
            self._snapshot = self._build(self._snapshot.generation)

    def _build(self, generation: int) -> RuleSet:
        return RuleSet.build(
            self._db_rules, self._code_rules.values(), default_rule(), generation=generation
        )

    # Invalidation ---------------------------------------------------------------------------

    def mark_stale(self) -> None:
        self._stale = True

    def _fresh(self, now: float) -> RuleSet | None:
        snapshot = self._snapshot
        if snapshot is not None and not self._stale and now < self._next_poll:
            return snapshot
        return None

    def _must_reload(self, generation: int | None, now: float) -> bool:
        return (
            self._stale
            or self._load_failed
            or self._snapshot is None
            or (generation is not None and generation != self._seen_generation)
            or now - self._loaded_at >= MAX_AGE_SECONDS
        )

    def _install(self, rows: tuple[Rule, ...] | None, generation: int | None, now: float) -> None:
        if rows is not None:
            self._db_rules = rows
            self._loaded_at = now
            if generation is not None:
                self._seen_generation = generation
        previous = self._snapshot.generation if self._snapshot is not None else 0
        self._snapshot = self._build(previous + 1)

    # Sync entry point -----------------------------------------------------------------------

    def snapshot(self) -> RuleSet:
        """The rules in force; reloads them first when another process changed them."""
        # ``_fresh`` inlined: this is every request's path, the rest is twice a second.
        snapshot = self._snapshot
        if snapshot is not None and not self._stale and time.monotonic() < self._next_poll:
            return snapshot
        if not self._refreshing.acquire(blocking=False):
            if self._snapshot is not None:
                return self._snapshot
            self._refreshing.acquire()
        try:
            now = time.monotonic()
            generation = _read_generation()
            self._next_poll = now + POLL_SECONDS
            if self._must_reload(generation, now):
                self._stale = False
                self._install(self._load_rows(), generation, now)
            return self._snapshot  # type: ignore[return-value]
        finally:
            self._refreshing.release()

    # Async entry point ----------------------------------------------------------------------

    async def asnapshot(self) -> RuleSet:
        """``snapshot()`` for the event loop: no blocking I/O on the loop's thread."""
        now = time.monotonic()
        fresh = self._fresh(now)
        if fresh is not None:
            return fresh
        if not self._refreshing.acquire(blocking=False):
            if self._snapshot is not None:
                return self._snapshot
            # First load racing another thread: load on our own rather than block the loop.
            return await self._arefresh(holding_lock=False)
        try:
            return await self._arefresh(holding_lock=True)
        finally:
            self._refreshing.release()

    async def _arefresh(self, holding_lock: bool) -> RuleSet:
        now = time.monotonic()
        generation = await _aread_generation()
        if holding_lock:
            self._next_poll = now + POLL_SECONDS
        if self._must_reload(generation, now):
            self._stale = False
            rows = await sync_to_async(self._load_rows, thread_sensitive=True)()
            self._install(rows, generation, now)
        return self._snapshot  # type: ignore[return-value]

    # Loading --------------------------------------------------------------------------------

    def _load_rows(self) -> tuple[Rule, ...] | None:
        """Database rules, or None (keep the previous ones) when the database cannot answer."""
        try:
            rows = tuple(rule_from_row(row) for row in RateLimitRule.objects.all())
        except DatabaseError as exc:
            # Retried at the next poll, not on every request.
            self._load_failed = True
            now = time.monotonic()
            if now - self._last_db_log >= DB_FAILURE_LOG_INTERVAL:
                self._last_db_log = now
                logger.warning("Rate-limit rules could not be loaded, keeping the last: %s", exc)
            return None
        self._load_failed = False
        return rows


def _generation_alias() -> str | None:
    if resilience_settings.RATE_LIMIT_BACKEND != "redis":
        return None
    return resilience_settings.RATE_LIMIT_CACHE_ALIAS


def _take_stats() -> stats.Batch | None:
    """This process's rate-limit tallies; with the memory backend they are stored here at once."""
    batch = stats.counts.take()
    if batch is not None and resilience_settings.RATE_LIMIT_BACKEND != "redis":
        stats.memory_buckets.add(batch)
        return None
    return batch


def _generation_of(results: list[Any]) -> int | None:
    value = results[0]
    return None if isinstance(value, Exception) else int(value or 0)


def _read_generation() -> int | None:
    """The generation in Redis (None without Redis); flushes the stats in the same round trip."""
    batch = _take_stats()
    alias = _generation_alias()
    if alias is None:
        return None
    try:
        with translate_errors(alias):
            client = get_sync_client(alias)
            if batch is None:
                return int(client.get(GENERATION_KEY) or 0)
            pipe = client.pipeline(transaction=False)
            pipe.get(GENERATION_KEY)
            stats.queue_writes(pipe, batch)
            return _generation_of(pipe.execute(raise_on_error=False))
    except (BackendUnavailable, redis.exceptions.RedisError):
        return None


async def _aread_generation() -> int | None:
    batch = _take_stats()
    alias = _generation_alias()
    if alias is None:
        return None
    try:
        client = get_async_client(alias)
        if batch is None:
            return int(await client.get(GENERATION_KEY) or 0)
        pipe = client.pipeline(transaction=False)
        pipe.get(GENERATION_KEY)
        stats.queue_writes(pipe, batch)
        return _generation_of(await pipe.execute(raise_on_error=False))
    except (*REDIS_ERRORS, redis.exceptions.RedisError):
        return None


def flush_stats() -> bool:
    """Write this process's rate-limit tallies now (the status page and metrics call it).

    False when Redis refused them; they are dropped then (see ``resilience.ratelimit.stats``).
    """
    batch = _take_stats()
    alias = _generation_alias()
    if batch is None or alias is None:
        return True
    try:
        with translate_errors(alias):
            pipe = get_sync_client(alias).pipeline(transaction=False)
            stats.queue_writes(pipe, batch)
            pipe.execute()
    except (BackendUnavailable, redis.exceptions.RedisError) as exc:
        logger.warning("Rate-limit statistics could not be written to Redis: %s", exc)
        return False
    return True


def publish_change() -> None:
    """Mark this process's snapshot stale and tell the other processes (now, not on commit)."""
    registry.mark_stale()
    alias = _generation_alias()
    if alias is None:
        return
    try:
        with translate_errors(alias):
            get_sync_client(alias).incr(GENERATION_KEY)
    except BackendUnavailable as exc:
        logger.warning(
            "Rate-limit rules changed but other workers could not be told (%s); they pick the "
            "change up within %d s.",
            exc,
            MAX_AGE_SECONDS,
        )


def rules_changed(using: str | None = None) -> None:
    """Call after changing ``RateLimitRule`` rows without signals (``QuerySet.update``).

    The change is published when the transaction commits (at once outside a transaction), so no
    process reloads before the new rows are visible.
    """
    transaction.on_commit(publish_change, using=using)


registry = RuleRegistry()


@receiver(post_save, sender=RateLimitRule, dispatch_uid="resilience.registry.saved")
@receiver(post_delete, sender=RateLimitRule, dispatch_uid="resilience.registry.deleted")
@receiver(policy_rows_changed, sender=RateLimitRule, dispatch_uid="resilience.registry.bulk")
def _rule_row_changed(*, using: str, **kwargs: Any) -> None:
    rules_changed(using=using)


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in ("RESILIENCE", "CACHES"):
        registry.mark_stale()


def all_rules() -> Iterable[Rule]:
    """Database and code rules as last loaded by this process (for checks and tooling)."""
    return registry._db_rules + registry.code_rules
