"""How many requests each rule allowed and blocked, and whom it blocked most: for operators.

The request path pays for this with a few integer increments and no I/O:

* ``counts.record(rule, allowed, storage_key)`` (called by the limiter once per rule it decided
  on) adds one to the rule's ``allowed`` or ``blocked`` tally in this process, under a lock held
  for a dictionary update. A blocked request also adds one to its client's tally; the client is
  the identity digest already in the counter's storage key (an HMAC, never the raw IP or key),
  read only on that path.
* Every process flushes its tallies at most every ``registry.POLL_SECONDS`` (0.5 s), on the
  request that already polls the rule generation: with the ``redis`` backend the ``GET`` of the
  generation becomes one pipeline that also ``HINCRBY``\\s per-minute buckets, so a flush adds no
  round trip. With the ``memory`` backend the buckets stay in this process (it is the only one).
  The same flush hands the tallies to listeners (``resilience.metrics`` adds them to its
  Prometheus counters), so Prometheus costs the request path nothing either.

Storage (Redis), fleet-wide, each key expiring ``RETENTION_SECONDS`` (2 h) after its last write:

* ``resilience:stats:rl:<minute>`` (hash): ``<rule id>:allowed`` and ``<rule id>:blocked``, where
  ``<minute>`` is Unix time // 60 on the flushing server's clock and ``<rule id>`` is
  ``<source>:<name>`` (``db:create-task``, ``code:...``, ``default:default``).
* ``resilience:stats:rl:top:<rule id>:<minute>`` (sorted set): client digest -> requests blocked.

Most limited clients: tallied in process and flushed with the same pipeline (``ZINCRBY``) rather
than found by ``SCAN``\\ning the counter keys on the status page. Counter keys hold algorithm
state (a sliding log, a window count, a token-bucket time), which says who is near a limit now,
not who was refused; and a SCAN walks every client's key, which on a busy fleet is the whole
keyspace. The tally is bounded: a rule remembers at most ``MAX_CLIENTS_PER_FLUSH`` distinct
clients per flush interval; blocked requests of clients beyond that in the same half second are
counted for the rule but not attributed (only a flood of distinct clients reaches it, and then
no client stands out anyway).

Exactness: counts are exact per process (the lock makes each increment atomic) and summed exactly
in Redis; a count is lost only when Redis fails the flush pipeline (the tallies taken for it are
dropped rather than piled up: with Redis down the limiter decides nothing anyway). Buckets are
per wall-clock minute of the flushing server, so a count lands in the minute it was flushed, at
most 0.5 s (plus clock skew between servers) after the request. A process that serves no request
for a while flushes on its next request (or when the status page or metrics endpoint asks it to).

What a rule counts, per request: when the request is allowed, every rule that applied counts
``allowed`` (a shadow rule that would have refused it counts ``blocked``: "would have blocked");
when an enforced rule refuses it, each refusing rule counts ``blocked`` and the enforced rules that
would have let it through count nothing, since the request consumed none of their quota.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from resilience.ratelimit.rules import Rule

KEY_PREFIX = "resilience:stats:rl:"
TOP_PREFIX = KEY_PREFIX + "top:"
BUCKET_SECONDS = 60
RETENTION_SECONDS = 7_200
MAX_CLIENTS_PER_FLUSH = 100
# Characters of a client digest shown to operators: enough to tell clients apart, and to match a
# digest computed by hand (``keys.digest("ip:203.0.113.7")[:12]``).
CLIENT_CHARS = 12


def rule_id(rule: Rule) -> str:
    """The name a rule's counts are stored under: ``<source>:<name>``."""
    return f"{rule.source}:{rule.name}"


def minute_of(timestamp: float) -> int:
    return int(timestamp // BUCKET_SECONDS)


def client_of(storage_key: str) -> str:
    """The identity digest (the hash tag) of a counter's storage key ``rl:{<digest>}:...``."""
    end = storage_key.find("}")
    return storage_key[4:end] if storage_key.startswith("rl:{") and end > 4 else "?"


class Tally:
    """One rule's counts since the last flush (mutated only under ``RuleCounts._lock``)."""

    __slots__ = ("allowed", "blocked", "clients", "rule")

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.allowed = 0
        self.blocked = 0
        self.clients: dict[str, int] = {}


@dataclass(frozen=True)
class Batch:
    """What one flush carries: the tallies of one process since its previous flush."""

    minute: int
    tallies: tuple[Tally, ...]
    unavailable_allowed: int = 0
    unavailable_refused: int = 0


class RuleCounts:
    """This process's tallies; ``take()`` hands them over and starts afresh."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Keyed by id(rule): an int hashes at once, and the tally keeps its rule alive, so the id
        # cannot be reused by another object before the tally is taken.
        self._pending: dict[int, Tally] = {}
        self._unavailable = [0, 0]
        self._listeners: list[Callable[[Batch], None]] = []

    def record(self, rule: Rule, allowed: bool, storage_key: str) -> None:
        """Count one decision of ``rule``; ``storage_key`` names the client when it is blocked."""
        with self._lock:
            tally = self._pending.get(id(rule))
            if tally is None:
                tally = self._pending[id(rule)] = Tally(rule)
            if allowed:
                tally.allowed += 1
                return
            tally.blocked += 1
            client = client_of(storage_key)
            clients = tally.clients
            if client in clients:
                clients[client] += 1
            elif len(clients) < MAX_CLIENTS_PER_FLUSH:
                clients[client] = 1

    def record_unavailable(self, allowed: bool) -> None:
        """Count a request decided without the backend (fail open: allowed; closed: refused)."""
        with self._lock:
            self._unavailable[0 if allowed else 1] += 1

    def take(self, now: float | None = None) -> Batch | None:
        """The tallies since the last call (None when there are none), told to every listener."""
        with self._lock:
            if not self._pending and not any(self._unavailable):
                return None
            pending, self._pending = self._pending, {}
            unavailable, self._unavailable = self._unavailable, [0, 0]
        batch = Batch(
            minute_of(time.time() if now is None else now),
            tuple(pending.values()),
            unavailable[0],
            unavailable[1],
        )
        for listener in tuple(self._listeners):
            listener(batch)
        return batch

    def add_listener(self, listener: Callable[[Batch], None]) -> None:
        """Call ``listener(batch)`` on every flush, in the flushing thread: keep it short."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Batch], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)


counts = RuleCounts()


# Writing ---------------------------------------------------------------------------------------


def queue_writes(pipe: Any, batch: Batch) -> None:
    """Queue a batch's writes on a Redis pipeline (sync or asyncio: queuing does no I/O)."""
    bucket = f"{KEY_PREFIX}{batch.minute}"
    wrote_bucket = False
    for tally in batch.tallies:
        rid = rule_id(tally.rule)
        if tally.allowed:
            pipe.hincrby(bucket, f"{rid}:allowed", tally.allowed)
            wrote_bucket = True
        if tally.blocked:
            pipe.hincrby(bucket, f"{rid}:blocked", tally.blocked)
            wrote_bucket = True
        if tally.clients:
            top = f"{TOP_PREFIX}{rid}:{batch.minute}"
            for client, n in tally.clients.items():
                pipe.zincrby(top, n, client)
            pipe.expire(top, RETENTION_SECONDS)
    if wrote_bucket:
        pipe.expire(bucket, RETENTION_SECONDS)


class MemoryBuckets:
    """The per-minute buckets of the ``memory`` backend, in this process, pruned to retention."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[int, dict[str, int]] = {}
        self._top: dict[tuple[str, int], dict[str, int]] = {}

    def add(self, batch: Batch) -> None:
        with self._lock:
            bucket = self._counts.setdefault(batch.minute, {})
            for tally in batch.tallies:
                rid = rule_id(tally.rule)
                for outcome, n in (("allowed", tally.allowed), ("blocked", tally.blocked)):
                    if n:
                        field = f"{rid}:{outcome}"
                        bucket[field] = bucket.get(field, 0) + n
                if tally.clients:
                    top = self._top.setdefault((rid, batch.minute), {})
                    for client, n in tally.clients.items():
                        top[client] = top.get(client, 0) + n
            oldest = batch.minute - RETENTION_SECONDS // BUCKET_SECONDS
            for minute in [m for m in self._counts if m < oldest]:
                del self._counts[minute]
            for key in [k for k in self._top if k[1] < oldest]:
                del self._top[key]

    def minute_counts(self, minutes: Sequence[int]) -> dict[int, dict[str, int]]:
        with self._lock:
            return {m: dict(self._counts.get(m, {})) for m in minutes}

    def top_clients(self, rid: str, minutes: Iterable[int]) -> dict[str, int]:
        merged: dict[str, int] = {}
        with self._lock:
            for minute in minutes:
                for client, n in self._top.get((rid, minute), {}).items():
                    merged[client] = merged.get(client, 0) + n
        return merged

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()
            self._top.clear()


memory_buckets = MemoryBuckets()


# Reading (the status page; may take a round trip or two, never on the request path) -----------


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read_minute_counts(client: Any, minutes: Sequence[int]) -> dict[int, dict[str, int]]:
    """The buckets of ``minutes`` from Redis, in one pipelined round trip."""
    pipe = client.pipeline(transaction=False)
    for minute in minutes:
        pipe.hgetall(f"{KEY_PREFIX}{minute}")
    return {
        minute: {_text(k): int(v) for k, v in raw.items()}
        for minute, raw in zip(minutes, pipe.execute(), strict=True)
    }


def read_top_clients(
    client: Any, wanted: dict[str, Sequence[int]], per_minute: int = 50
) -> dict[str, dict[str, int]]:
    """Blocked requests per client digest, for each rule id over its minutes (one round trip).

    Each minute contributes its ``per_minute`` most blocked clients, so a client blocked a little
    in many minutes may be under-counted; the heavy hitters an operator looks for are not.
    """
    pipe = client.pipeline(transaction=False)
    for rid, minutes in wanted.items():
        for minute in minutes:
            pipe.zrevrange(f"{TOP_PREFIX}{rid}:{minute}", 0, per_minute - 1, withscores=True)
    results = iter(pipe.execute())
    merged: dict[str, dict[str, int]] = {}
    for rid, minutes in wanted.items():
        clients = merged.setdefault(rid, {})
        for _ in minutes:
            for member, score in next(results):
                name = _text(member)
                clients[name] = clients.get(name, 0) + int(score)
    return merged
