"""What an operator needs during an incident, gathered in one place: breakers, buffer, rate limits.

The status page (``resilience.views.status``) and the metrics endpoint's gauges read from here.
Nothing here runs on the request path, so it may query the database and Redis, but it keeps to a
few round trips whatever the traffic:

* Breakers: one row query for the policies, then each breaker's ``stats()`` (one Redis read each
  with the ``redis`` backend: the fleet's state, not this process's).
* Buffer: one grouped count by status, one query for the oldest pending receipt, one count of
  deliveries in the last hour, and the depth over the last hour from three per-minute aggregates
  (``TruncMinute``) rather than a query per minute (see ``buffer_depth_per_minute``).
* Rate limits: the rules in force from this process's snapshot, and their counts from the
  per-minute buckets of ``resilience.ratelimit.stats`` (two pipelined Redis round trips, or
  process memory with the ``memory`` backend).

A part that cannot be read (Redis down, the database refusing) is reported as an error on that
part; the rest of the page still renders, since the page is most needed when something is down.
"""

from __future__ import annotations

import datetime
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError
from django.db.models import Count, Min
from django.db.models.functions import TruncMinute
from django.utils import timezone

from resilience.breaker import get_breaker
from resilience.breaker.registry import MEMORYGATE
from resilience.conf import resilience_settings
from resilience.exceptions import BackendUnavailable
from resilience.models import BreakerPolicy, BufferedReceipt, ReceiptStatus
from resilience.ratelimit import stats as rl_stats
from resilience.ratelimit.rules import Rule
from resilience.redis import REDIS_ERRORS, get_sync_client, translate_errors
from resilience.registry import all_rules, default_rule, flush_stats, registry

logger = logging.getLogger("resilience.status")

HOUR_MINUTES = 60
TOP_CLIENTS = 5
BUFFERED_STATUSES = (ReceiptStatus.PENDING, ReceiptStatus.IN_FLIGHT)


def _utc(value: datetime.datetime | None) -> datetime.datetime | None:
    return None if value is None else value.astimezone(datetime.UTC)


# Breakers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BreakerStatus:
    name: str
    enabled: bool
    state: str = "unknown"
    state_since: datetime.datetime | None = None
    held_seconds: float | None = None
    failure_count: int = 0
    last_error: str = ""
    last_failure_time: datetime.datetime | None = None
    opened_at: datetime.datetime | None = None
    retry_in_seconds: float | None = None
    override: str = ""
    policy: dict[str, Any] = field(default_factory=dict)
    total_rejections: int = 0
    store: str = ""
    error: str = ""


def breaker_names() -> list[tuple[str, bool]]:
    """Every policy's name and ``enabled``, plus ``memorygate`` when it runs without a row."""
    try:
        rows = list(BreakerPolicy.objects.order_by("name").values_list("name", "enabled"))
    except DatabaseError as exc:
        logger.warning("Status: breaker policies could not be read, showing memorygate: %s", exc)
        rows = []
    if MEMORYGATE not in {name for name, _ in rows}:
        rows.insert(0, (MEMORYGATE, bool(resilience_settings.MEMORYGATE_CIRCUIT_BREAKER_ENABLED)))
    return rows


def breaker_status(now: datetime.datetime | None = None) -> list[BreakerStatus]:
    now = now or timezone.now()
    found = []
    for name, enabled in breaker_names():
        try:
            stats = get_breaker(name).stats()
        except (LookupError, BackendUnavailable, ValueError) as exc:
            found.append(BreakerStatus(name=name, enabled=enabled, error=str(exc)))
            continue
        since = stats.get("state_since")
        opened_at = stats.get("opened_at")
        retry_in = None
        if stats["state"] == "open" and opened_at is not None:
            timeout = stats["policy"]["timeout_seconds"]
            retry_in = max(0.0, (opened_at - now).total_seconds() + timeout)
        found.append(
            BreakerStatus(
                name=name,
                enabled=enabled,
                state=stats["state"],
                state_since=since,
                held_seconds=None if since is None else max(0.0, (now - since).total_seconds()),
                failure_count=stats["failure_count"],
                last_error=stats["last_error"],
                last_failure_time=stats["last_failure_time"],
                opened_at=opened_at,
                retry_in_seconds=retry_in,
                override=stats.get("override", ""),
                policy=stats["policy"],
                total_rejections=stats["total_rejections"],
                store=stats.get("store", ""),
            )
        )
    return found


# The receipt buffer ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BufferStatus:
    by_status: dict[str, int]
    oldest_pending_at: datetime.datetime | None
    oldest_pending_age_seconds: float | None
    delivered_last_hour: int
    depth_per_minute: list[int]
    minutes: list[datetime.datetime]
    error: str = ""

    @property
    def buffered(self) -> int:
        return sum(self.by_status.get(status, 0) for status in BUFFERED_STATUSES)


def _per_minute(queryset: Any, column: str) -> dict[datetime.datetime, int]:
    rows = (
        queryset.annotate(minute=TruncMinute(column, tzinfo=datetime.UTC))
        .values("minute")
        .annotate(n=Count("id"))
        .order_by()
    )
    return {_utc(row["minute"]): row["n"] for row in rows}


def buffer_depth_per_minute(
    now: datetime.datetime, depth_now: int, minutes: int = HOUR_MINUTES
) -> tuple[list[datetime.datetime], list[int]]:
    """Receipts waiting in the buffer at the end of each of the last ``minutes`` minutes.

    Walks back from the exact depth now: a receipt is in the buffer from ``created_at`` until it
    is delivered (``delivered_at``) or dead-lettered (``updated_at`` of a dead row, the time of its
    last write). So depth(t) = depth(now) - arrivals after t + departures after t, from three
    grouped queries over the hour. Approximations: a dead row touched later (by an admin action)
    counts as leaving then; a dead row requeued to pending counts as never having left.
    """
    end = now.replace(second=0, microsecond=0)
    start = end - datetime.timedelta(minutes=minutes - 1)
    rows = BufferedReceipt.objects.all()
    arrivals = _per_minute(rows.filter(created_at__gte=start), "created_at")
    delivered = _per_minute(
        rows.filter(status=ReceiptStatus.DELIVERED, delivered_at__gte=start), "delivered_at"
    )
    dead = _per_minute(rows.filter(status=ReceiptStatus.DEAD, updated_at__gte=start), "updated_at")
    stamps = [start + datetime.timedelta(minutes=i) for i in range(minutes)]
    depths: list[int] = []
    depth = depth_now
    # Minute ``stamp`` covers [stamp, stamp + 1 min); the last one is the current minute, whose
    # depth is the depth now. Going back, undo the minute after each point.
    for stamp in reversed(stamps):
        depths.append(max(0, depth))
        depth -= arrivals.get(stamp, 0)
        depth += delivered.get(stamp, 0) + dead.get(stamp, 0)
    depths.reverse()
    return stamps, depths


def buffer_status(now: datetime.datetime | None = None) -> BufferStatus:
    now = now or timezone.now()
    try:
        by_status = dict.fromkeys(ReceiptStatus.values, 0)
        for status, n in (
            BufferedReceipt.objects.values("status")
            .annotate(n=Count("id"))
            .order_by()
            .values_list("status", "n")
        ):
            by_status[status] = n
        oldest = BufferedReceipt.objects.filter(status__in=BUFFERED_STATUSES).aggregate(
            oldest=Min("created_at")
        )["oldest"]
        delivered = BufferedReceipt.objects.filter(
            status=ReceiptStatus.DELIVERED, delivered_at__gte=now - datetime.timedelta(hours=1)
        ).count()
        depth_now = sum(by_status[s] for s in BUFFERED_STATUSES)
        minutes, depths = buffer_depth_per_minute(now, depth_now)
    except DatabaseError as exc:
        logger.warning("Status page: the receipt buffer could not be read: %s", exc)
        return BufferStatus({}, None, None, 0, [], [], error=str(exc))
    return BufferStatus(
        by_status=by_status,
        oldest_pending_at=oldest,
        oldest_pending_age_seconds=None if oldest is None else (now - oldest).total_seconds(),
        delivered_last_hour=delivered,
        depth_per_minute=depths,
        minutes=minutes,
    )


# Rate limits ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleStatus:
    rule_id: str
    name: str
    path: str
    source: str
    mode: str
    rate: str
    window_seconds: int | None
    window_since: datetime.datetime
    allowed: int
    blocked: int
    blocked_last_hour: int
    blocked_per_minute: list[int]
    top_clients: list[tuple[str, int]]


@dataclass(frozen=True)
class RateLimitStatus:
    enabled: bool
    backend: str
    rules: list[RuleStatus]
    blocked_per_minute: list[int]
    minutes: list[datetime.datetime]
    error: str = ""


def window_minutes(window_seconds: int | None, now_minute: int) -> list[int]:
    """The minute buckets covering a window that ends now: its length rounded up to whole
    minutes, plus the minute under way (at most the hour the page charts)."""
    span = HOUR_MINUTES if window_seconds is None else math.ceil(window_seconds / 60)
    span = min(HOUR_MINUTES, span + 1)
    return list(range(now_minute - span + 1, now_minute + 1))


def _read_buckets(
    hour: Sequence[int], top_wanted: dict[str, list[int]]
) -> tuple[dict[int, dict[str, int]], dict[str, dict[str, int]]]:
    if resilience_settings.RATE_LIMIT_BACKEND != "redis":
        counts = rl_stats.memory_buckets.minute_counts(hour)
        top = {rid: rl_stats.memory_buckets.top_clients(rid, m) for rid, m in top_wanted.items()}
        return counts, top
    alias = resilience_settings.RATE_LIMIT_CACHE_ALIAS
    with translate_errors(alias):
        client = get_sync_client(alias)
        counts = rl_stats.read_minute_counts(client, hour) if hour else {}
        top = rl_stats.read_top_clients(client, top_wanted) if top_wanted else {}
        return counts, top


def _known_rules() -> list[Rule]:
    registry.snapshot()  # loads the rules if this process has not yet
    rules = list(all_rules())
    default = default_rule()
    if default is not None:
        rules.append(default)
    return rules


def ratelimit_status(now: datetime.datetime | None = None) -> RateLimitStatus:
    now = now or timezone.now()
    now_minute = rl_stats.minute_of(now.timestamp())
    hour = list(range(now_minute - HOUR_MINUTES + 1, now_minute + 1))
    stamps = [datetime.datetime.fromtimestamp(m * 60, tz=datetime.UTC) for m in hour]
    enabled = bool(resilience_settings.RATE_LIMIT_ENABLED)
    backend = resilience_settings.RATE_LIMIT_BACKEND
    rules = _known_rules()
    try:
        flush_stats()
        # Top clients only for rules that blocked someone this hour: first the buckets, then
        # the sorted sets of those rules alone.
        counts, _ = _read_buckets(hour, {})
        blocked_rules = {
            field.rsplit(":", 1)[0]
            for bucket in counts.values()
            for field, n in bucket.items()
            if field.endswith(":blocked") and n
        }
        windows = {rl_stats.rule_id(rule): rule.window_seconds for rule in rules}
        top_wanted = {
            rid: window_minutes(windows.get(rid), now_minute) for rid in sorted(blocked_rules)
        }
        _, top = _read_buckets([], top_wanted) if top_wanted else ({}, {})
    except (BackendUnavailable, *REDIS_ERRORS) as exc:
        return RateLimitStatus(enabled, backend, [], [0] * len(hour), stamps, error=str(exc))

    def series(rid: str, outcome: str) -> list[int]:
        return [counts[m].get(f"{rid}:{outcome}", 0) for m in hour]

    seen = {
        field.rsplit(":", 1)[0] for bucket in counts.values() for field in bucket if ":" in field
    }
    found: list[RuleStatus] = []
    listed: set[str] = set()
    for rule in rules:
        rid = rl_stats.rule_id(rule)
        listed.add(rid)
        found.append(
            _rule_status(
                rid, rule, now_minute=now_minute, hour=hour, series=series, clients=top.get(rid, {})
            )
        )
    # Counted but not in this process's rules: @rate_limit view rules, or rules since deleted.
    for rid in sorted(seen - listed):
        found.append(
            _rule_status(
                rid, None, now_minute=now_minute, hour=hour, series=series, clients=top.get(rid, {})
            )
        )
    total_blocked = [sum(n for f, n in counts[m].items() if f.endswith(":blocked")) for m in hour]
    return RateLimitStatus(enabled, backend, found, total_blocked, stamps)


def _rule_status(
    rid: str,
    rule: Rule | None,
    *,
    now_minute: int,
    hour: list[int],
    series: Any,
    clients: dict[str, int],
) -> RuleStatus:
    window = rule.window_seconds if rule is not None else None
    in_window = window_minutes(window, now_minute)
    first = len(hour) - len(in_window)
    allowed, blocked = series(rid, "allowed"), series(rid, "blocked")
    top = sorted(clients.items(), key=lambda item: (-item[1], item[0]))[:TOP_CLIENTS]
    source, _, name = rid.partition(":")
    return RuleStatus(
        rule_id=rid,
        name=rule.name if rule is not None else name,
        path=rule.path if rule is not None else "",
        source=source,
        mode=rule.mode if rule is not None else "",
        rate=rule.rate_display if rule is not None else "",
        window_seconds=window,
        window_since=datetime.datetime.fromtimestamp(in_window[0] * 60, tz=datetime.UTC),
        allowed=sum(allowed[first:]),
        blocked=sum(blocked[first:]),
        blocked_last_hour=sum(blocked),
        blocked_per_minute=blocked,
        top_clients=[(digest[: rl_stats.CLIENT_CHARS], n) for digest, n in top],
    )
