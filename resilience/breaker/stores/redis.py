"""Breaker state shared by the fleet through Redis: one hash per breaker, one Lua script.

Layout (``{name}`` is a hash tag, so both keys of a breaker live on one Redis Cluster slot):

* ``resilience:breaker:{name}`` (hash): ``state``, ``state_since`` (when it entered that state;
  absent from hashes written before the field existed), ``failures``, ``successes``, ``opened_at``,
  ``last_failure_time``, ``last_error``, the totals (``calls``, ``total_failures``,
  ``total_successes``, ``rejections``), the policy in force (``enabled``, ``failure_threshold``,
  ``timeout_seconds``, ``half_open_max_calls``, ``success_threshold``, ``override``), ``gen``,
  bumped by every reset, and ``probe_epoch``, bumped by every entry into HALF_OPEN.
* ``resilience:breaker:{name}:probes`` (sorted set): HALF_OPEN probe leases, token scored by expiry.
  Every script run first drops expired leases, so a slot held by a worker killed mid-probe comes
  back by itself after ``probe_lease_seconds``. A token reads ``"<probe_epoch>:<random>"``: a
  probe's outcome moves the circuit only in the half-open period that admitted it.

Every operation is one ``EVALSHA`` of ``BREAKER_LUA``: atomic, on the Redis server clock (so app
servers with skewed clocks agree), returning the whole hash so the caller's snapshot is fresh after
each round trip. The script's second argument may carry "now" instead of the server clock: tests
use it (``RedisStore(clock=...)``) to drive time; production leaves it empty.

What costs a round trip, and why:

* A call admitted while CLOSED costs none. Each process keeps a snapshot of the hash; the first
  call after it is older than ``snapshot_max_age`` (0.5 s) is admitted by Redis itself, and that
  round trip refreshes the snapshot (other threads meanwhile go on with the old one). So a circuit
  opened by one worker is seen by every worker within a second, at the price of one round trip
  per busy process per half second. An idle, disabled breaker is refreshed by ``poll()``. A
  refresh that has not reported back after ``refresh_timeout`` is taken as abandoned (a ``poll``
  task whose event loop closed before it ran) and the next caller refreshes instead, so a lost
  refresher never freezes the snapshot.
* A success while CLOSED writes only when the snapshot shows a failure count to reset. The count a
  success resets is therefore the one this process saw at most ``snapshot_max_age`` ago: a failure
  recorded elsewhere in that window may survive a success here, so under mixed traffic the
  circuit can open after failures that a success interrupted less than ``snapshot_max_age``
  earlier. The alternative is a round trip on every healthy call, which DESIGN.md rules out.
* Calls, successes and local refusals (OPEN, or forced open) are counted in the process and
  added to the hash's totals with its next round trip (dropped if a reset happened in between):
  the totals lag by one snapshot period for a busy process and cost nothing extra.
* A failure, a probe, a refusal that needs the server's judgement (OPEN whose timeout has passed)
  and every transition cost exactly one round trip.

Policy numbers live in the hash: seeded from the caller's policy when the hash is created, and
overwritten when a policy is saved (``configure``), so an admin edit reaches the running fleet
with the next snapshot refresh, with the breaker's state untouched and no database query.

Redis unreachable: the store answers from a per-process ``MemoryStore`` fallback (the protected
call never fails because of the store), retries Redis after ``retry_interval`` seconds, and logs the
outage at most once per ``OUTAGE_LOG_INTERVAL``. At the start of each outage the fallback takes the
state, counts and policy (override included) of the last snapshot, so a circuit the fleet opened
stays open, its timeout running from the fleet's ``opened_at``, and a forced-open circuit keeps
refusing; from there each process judges on its own. ``stats()`` then answers with the fallback's
view, marked ``store: "memory-fallback"``. Operator actions (reset, configure, override) raise
``BackendUnavailable`` instead: they cannot reach the fleet, and saying so is the honest answer.
They change nothing in this process either. A policy that ``configure`` could not deliver is kept
(``unapplied_policy``) and written by this process's first round trip that succeeds, unless the
fleet's policy changed in the meantime (a later save elsewhere wins; the drop is logged).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import redis

from resilience.breaker.machine import (
    ADMIT_CLOSED,
    ADMIT_FORCED,
    DEFAULT_PROBE_LEASE_SECONDS,
    Admission,
    Outcome,
    Override,
    PermitKind,
    Policy,
    State,
    Ticket,
    Transition,
    clip_error,
    stats_dict,
)
from resilience.breaker.stores.memory import MemoryStore
from resilience.exceptions import BackendUnavailable
from resilience.redis import async_script, sync_script, translate_errors

logger = logging.getLogger("resilience.breaker")

DEFAULT_SNAPSHOT_MAX_AGE = 0.5
DEFAULT_RETRY_INTERVAL = 1.0
# A snapshot refresh still unfinished after this long is taken as abandoned (a task whose event
# loop closed before it ran never reports back). The registry derives it from the cache's socket
# timeouts; this serves a cache that sets none. Misjudging a slow refresh costs one extra round
# trip, no more; misjudging a lost one leaves decisions on a stale snapshot for this long.
DEFAULT_REFRESH_TIMEOUT = 5.0
OUTAGE_LOG_INTERVAL = 30.0

BREAKER_LUA = """
-- KEYS[1] breaker hash, KEYS[2] probe leases (token -> expiry)
-- ARGV[1] op: read | acquire | success | failure | ignore | reset | configure | override
-- ARGV[2] now in seconds, or "" for the server clock (tests pass it)
-- ARGV[3..8] policy: enabled, failure_threshold, timeout_seconds, half_open_max_calls,
--            success_threshold, override (seed on creation; written by configure / override)
-- ARGV[9] generation the caller's local counts belong to; ARGV[10..12] those counts:
--         calls, successes, rejections
-- ARGV[13] permit kind (closed | probe | forced); ARGV[14] probe token (acquire: a random part the
--          script prefixes with the half-open period, "<probe_epoch>:<random>"; settle: the token
--          granted); ARGV[15] error text; ARGV[16] probe lease seconds
local h, leases = KEYS[1], KEYS[2]
local op = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function num(x) return string.format('%.6f', x) end

if redis.call('EXISTS', h) == 0 then
  redis.call('HSET', h, 'state', 'closed', 'failures', 0, 'successes', 0, 'gen', 0,
    'probe_epoch', 0, 'calls', 0, 'total_failures', 0, 'total_successes', 0, 'rejections', 0,
    'opened_at', '', 'last_failure_time', '', 'last_error', '', 'state_since', num(now),
    'enabled', ARGV[3], 'failure_threshold', ARGV[4], 'timeout_seconds', ARGV[5],
    'half_open_max_calls', ARGV[6], 'success_threshold', ARGV[7], 'override', ARGV[8])
end
if op == 'configure' then
  redis.call('HSET', h, 'enabled', ARGV[3], 'failure_threshold', ARGV[4],
    'timeout_seconds', ARGV[5], 'half_open_max_calls', ARGV[6], 'success_threshold', ARGV[7],
    'override', ARGV[8])
elseif op == 'override' then
  redis.call('HSET', h, 'override', ARGV[8])
end

if redis.call('HGET', h, 'gen') == ARGV[9] then
  if ARGV[10] ~= '0' then redis.call('HINCRBY', h, 'calls', ARGV[10]) end
  if ARGV[11] ~= '0' then redis.call('HINCRBY', h, 'total_successes', ARGV[11]) end
  if ARGV[12] ~= '0' then redis.call('HINCRBY', h, 'rejections', ARGV[12]) end
end

local f = redis.call('HMGET', h, 'state', 'opened_at', 'failure_threshold', 'timeout_seconds',
  'half_open_max_calls', 'success_threshold', 'override')
local state, override = f[1], f[7]
local opened_at = tonumber(f[2]) or 0
local ft, timeout, hmax, st = tonumber(f[3]), tonumber(f[4]), tonumber(f[5]), tonumber(f[6])
local kind, token = ARGV[13], ARGV[14]
redis.call('ZREMRANGEBYSCORE', leases, '-inf', num(now))

local code, retry, from, to, granted = 'ok', 0, '', '', ''
local function move(new)
  from, to, state = state, new, new
  redis.call('DEL', leases)
  if new == 'open' then
    redis.call('HSET', h, 'state', new, 'successes', 0, 'opened_at', num(now),
      'state_since', num(now))
  elseif new == 'closed' then
    redis.call('HSET', h, 'state', new, 'successes', 0, 'failures', 0, 'opened_at', '',
      'state_since', num(now))
  else
    redis.call('HSET', h, 'state', new, 'successes', 0, 'state_since', num(now))
    redis.call('HINCRBY', h, 'probe_epoch', 1)
  end
end
local function epoch() return redis.call('HGET', h, 'probe_epoch') or '0' end
-- Whether a settled probe was admitted in the half-open period now running.
local function probing_now()
  return state == 'half_open' and string.match(token, '^(%d+):') == epoch()
end

if op == 'acquire' then
  if override == 'force_open' then
    redis.call('HINCRBY', h, 'rejections', 1)
    code, retry = 'rejected', timeout
  elseif override == 'force_closed' then
    redis.call('HINCRBY', h, 'calls', 1)
    code = 'forced'
  elseif state == 'closed' then
    redis.call('HINCRBY', h, 'calls', 1)
    code = 'closed'
  else
    if state == 'open' then
      local left = opened_at + timeout - now
      if left > 0 then
        redis.call('HINCRBY', h, 'rejections', 1)
        code, retry = 'rejected', left
      else
        move('half_open')
      end
    end
    if code == 'ok' then
      if redis.call('ZCARD', leases) >= hmax then
        local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
        redis.call('HINCRBY', h, 'rejections', 1)
        code, retry = 'rejected', math.max(0, math.min(tonumber(first[2]) - now, 1.0))
      else
        granted = epoch() .. ':' .. token
        redis.call('ZADD', leases, num(now + tonumber(ARGV[16])), granted)
        redis.call('HINCRBY', h, 'calls', 1)
        code = 'probe'
      end
    end
  end
elseif op == 'success' then
  redis.call('HINCRBY', h, 'total_successes', 1)
  if kind == 'probe' then redis.call('ZREM', leases, token) end
  if kind == 'closed' and state == 'closed' then
    redis.call('HSET', h, 'failures', 0)
  elseif kind == 'probe' and probing_now() then
    if redis.call('HINCRBY', h, 'successes', 1) >= st then move('closed') end
  end
elseif op == 'failure' then
  redis.call('HINCRBY', h, 'total_failures', 1)
  redis.call('HSET', h, 'last_failure_time', num(now), 'last_error', ARGV[15])
  if kind == 'probe' then redis.call('ZREM', leases, token) end
  if kind == 'closed' and state == 'closed' then
    if redis.call('HINCRBY', h, 'failures', 1) >= ft then move('open') end
  elseif kind == 'probe' and probing_now() then
    move('open')
  end
elseif op == 'ignore' then
  if kind == 'probe' then redis.call('ZREM', leases, token) end
elseif op == 'reset' then
  if state ~= 'closed' then
    from, to = state, 'closed'
    redis.call('HSET', h, 'state_since', num(now))
  end
  redis.call('HSET', h, 'state', 'closed', 'failures', 0, 'successes', 0,
    'calls', 0, 'total_failures', 0, 'total_successes', 0, 'rejections', 0,
    'opened_at', '', 'last_failure_time', '', 'last_error', '')
  redis.call('HINCRBY', h, 'gen', 1)
  redis.call('DEL', leases)
end

return {code, num(retry), from, to, num(now), granted, redis.call('ZCARD', leases),
  redis.call('HGETALL', h)}
"""

# Commands the script runs inside Redis. ``INFO commandstats`` counts them too, so whoever counts
# a client's round trips from it (tests, bench/breaker.py) leaves these out.
SCRIPT_COMMANDS = frozenset(
    {"time", "exists", "hset", "hget", "hincrby", "hmget", "hgetall", "del"}
    | {"zremrangebyscore", "zcard", "zrange", "zadd", "zrem"}
)

# Store failures that must never fail a protected call: connection trouble (translated), and
# anything else Redis answers with (a read-only replica, OOM, a script error).
STORE_ERRORS = (BackendUnavailable, redis.exceptions.RedisError)


@dataclass(frozen=True)
class Snapshot:
    """The breaker hash as of one round trip, plus the server clock at that moment."""

    state: State
    failures: int
    successes: int
    opened_at: float | None
    state_since: float | None
    last_failure_time: float | None
    last_error: str
    calls: int
    total_failures: int
    total_successes: int
    rejections: int
    generation: int
    probes: int
    policy: Policy
    server_now: float

    def stats(self) -> dict[str, Any]:
        return stats_dict(self, probes_in_flight=self.probes)


@dataclass(frozen=True)
class _Result:
    code: str
    retry_after: float
    transition: Transition | None
    token: str
    snapshot: Snapshot

    def admission(self) -> Admission:
        if self.code == "rejected":
            return Admission(None, retry_after=self.retry_after, transition=self.transition)
        kind = PermitKind(self.code)
        return Admission(Ticket(kind, self.token), transition=self.transition)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional_float(value: str) -> float | None:
    return float(value) if value else None


def _number(value: str) -> int | float:
    number = float(value)
    return int(number) if number.is_integer() else number


class RedisStore:
    kind = "redis"

    def __init__(
        self,
        name: str,
        policy: Policy,
        *,
        alias: str = "default",
        clock: Callable[[], float] | None = None,
        probe_lease_seconds: float = DEFAULT_PROBE_LEASE_SECONDS,
        snapshot_max_age: float = DEFAULT_SNAPSHOT_MAX_AGE,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
        refresh_timeout: float = DEFAULT_REFRESH_TIMEOUT,
    ) -> None:
        self.name = name
        self.alias = alias
        self.clock = clock  # None: the Redis server clock
        self.probe_lease_seconds = probe_lease_seconds
        self.snapshot_max_age = snapshot_max_age
        self.retry_interval = retry_interval
        self.refresh_timeout = refresh_timeout
        self.keys = [f"resilience:breaker:{{{name}}}", f"resilience:breaker:{{{name}}}:probes"]
        self._seed = policy
        self._fallback = MemoryStore(
            name,
            policy,
            clock=clock or time.time,
            probe_lease_seconds=probe_lease_seconds,
            fallback=True,
        )
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._snapshot_at = -math.inf  # time.monotonic() of the round trip that returned it
        self._refresh_started = -math.inf  # time.monotonic() when the refresh in flight began
        self._pending = [0, 0, 0]  # calls, successes, rejections not yet added to the hash
        self._unapplied: Policy | None = None  # saved by configure while Redis was unreachable
        self._unapplied_over: Policy | None = None  # the fleet's policy it is to replace
        self._down_until = -math.inf
        self._outage_logged_at = -math.inf
        self._in_outage = False
        self._tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ the policy and snapshot

    @property
    def policy(self) -> Policy:
        snapshot = self._snapshot
        return snapshot.policy if snapshot is not None else self._seed

    @property
    def unapplied_policy(self) -> Policy | None:
        return self._unapplied

    def _is_down(self) -> bool:
        return time.monotonic() < self._down_until

    def _refresh_in_flight(self, now: float) -> bool:
        return now - self._refresh_started < self.refresh_timeout

    def _now(self, snapshot: Snapshot) -> float:
        if self.clock is not None:
            return self.clock()
        return snapshot.server_now + (time.monotonic() - self._snapshot_at)

    def _decide_locally(self) -> Admission | None:
        """Admit or refuse from the snapshot when its answer cannot be wrong for long.

        ``None`` means "ask Redis" (whose answer also refreshes the snapshot): the snapshot is
        missing, stale (this caller becomes the one refresher; others meanwhile go on with the
        stale one) or cannot decide (OPEN whose timeout has passed, HALF_OPEN).
        """
        with self._lock:
            snapshot = self._snapshot
            if snapshot is None:
                return None
            now = time.monotonic()
            if now - self._snapshot_at > self.snapshot_max_age and not self._refresh_in_flight(now):
                self._refresh_started = now
                return None
            override = snapshot.policy.override
            if override == Override.FORCE_CLOSED:
                self._pending[0] += 1
                return ADMIT_FORCED
            if override == Override.FORCE_OPEN:
                self._pending[2] += 1
                return Admission(None, retry_after=float(snapshot.policy.timeout_seconds))
            if snapshot.state == State.CLOSED:
                self._pending[0] += 1
                return ADMIT_CLOSED
            if snapshot.state == State.OPEN:
                left = (snapshot.opened_at or 0.0) + snapshot.policy.timeout_seconds
                left -= self._now(snapshot)
                if left > 0:
                    self._pending[2] += 1
                    return Admission(None, retry_after=left)
        return None

    def _settles_locally(self, ticket: Ticket, outcome: Outcome) -> bool:
        if ticket.kind == PermitKind.BYPASS:
            return True
        if outcome == Outcome.IGNORE:
            return ticket.kind != PermitKind.PROBE
        if outcome == Outcome.SUCCESS and ticket.kind != PermitKind.PROBE:
            with self._lock:
                snapshot = self._snapshot
                nothing_to_reset = (
                    ticket.kind == PermitKind.FORCED
                    or snapshot is None
                    or snapshot.state != State.CLOSED
                    or snapshot.failures == 0
                )
                if nothing_to_reset:
                    self._pending[1] += 1
                return nothing_to_reset
        return False

    # ------------------------------------------------------------------ one round trip

    def _args(
        self, op: str, policy: Policy, ticket: Ticket | None, error: str, token: str
    ) -> tuple[list[Any], list[int]]:
        with self._lock:
            pending, self._pending = self._pending, [0, 0, 0]
            generation = self._snapshot.generation if self._snapshot is not None else -1
        now = "" if self.clock is None else repr(self.clock())
        args = [
            op,
            now,
            "1" if policy.enabled else "0",
            policy.failure_threshold,
            repr(policy.timeout_seconds),
            policy.half_open_max_calls,
            policy.success_threshold,
            str(policy.override),
            generation,
            *pending,
            str(ticket.kind) if ticket is not None else "",
            ticket.token if ticket is not None and ticket.token else token,
            clip_error(error),
            repr(float(self.probe_lease_seconds)),
        ]
        return args, pending

    def _restore(self, pending: list[int]) -> None:
        with self._lock:
            self._pending = [a + b for a, b in zip(self._pending, pending, strict=True)]

    def _failed(self, exc: Exception, pending: list[int]) -> BackendUnavailable:
        self._restore(pending)
        self._down_until = time.monotonic() + self.retry_interval
        with self._lock:
            self._snapshot_at = -math.inf  # never decide from a snapshot Redis cannot confirm
            outage_begins, self._in_outage = not self._in_outage, True
            last_seen = self._snapshot
        if outage_begins and last_seen is not None:
            # The fallback starts where the fleet stood, policy and override included: a circuit
            # the fleet opened (or an operator forced open) keeps refusing here, its timeout
            # running from when the fleet opened it.
            self._fallback.adopt(last_seen)
        if time.monotonic() - self._outage_logged_at >= OUTAGE_LOG_INTERVAL:
            self._outage_logged_at = time.monotonic()
            logger.warning(
                "Breaker %r: Redis store unavailable (%s); this process uses its local state "
                "until Redis answers again (next attempt in %.1f s; logged at most every %.0f s).",
                self.name,
                exc,
                self.retry_interval,
                OUTAGE_LOG_INTERVAL,
            )
        if isinstance(exc, BackendUnavailable):
            return exc
        return BackendUnavailable(f"Redis for cache {self.alias!r} failed: {exc}")

    def _run(
        self,
        op: str,
        *,
        policy: Policy | None = None,
        ticket: Ticket | None = None,
        error: str = "",
        token: str = "",
    ) -> _Result:
        if self._is_down():
            raise BackendUnavailable(f"Redis for cache {self.alias!r} is marked unreachable.")
        args, pending = self._args(op, policy or self.policy, ticket, error, token)
        try:
            with translate_errors(self.alias):
                raw = sync_script(self.alias, BREAKER_LUA)(keys=self.keys, args=args)
        except STORE_ERRORS as exc:
            raise self._failed(exc, pending) from exc
        result = self._absorb(raw)
        if self._unapplied is not None and op not in _DELIVER_THEMSELVES:
            self._deliver_unapplied(result.snapshot)
        return result

    async def _arun(
        self,
        op: str,
        *,
        policy: Policy | None = None,
        ticket: Ticket | None = None,
        error: str = "",
        token: str = "",
    ) -> _Result:
        if self._is_down():
            raise BackendUnavailable(f"Redis for cache {self.alias!r} is marked unreachable.")
        args, pending = self._args(op, policy or self.policy, ticket, error, token)
        try:
            with translate_errors(self.alias):
                raw = await async_script(self.alias, BREAKER_LUA)(keys=self.keys, args=args)
        except STORE_ERRORS as exc:
            raise self._failed(exc, pending) from exc
        result = self._absorb(raw)
        if self._unapplied is not None and op not in _DELIVER_THEMSELVES:
            await self._adeliver_unapplied(result.snapshot)
        return result

    def _absorb(self, raw: list[Any]) -> _Result:
        code, retry, previous, current, now, token, probes, flat = raw
        values = {_text(k): _text(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
        snapshot = Snapshot(
            state=State(values["state"]),
            failures=int(values["failures"]),
            successes=int(values["successes"]),
            opened_at=_optional_float(values["opened_at"]),
            state_since=_optional_float(values.get("state_since", "")),
            last_failure_time=_optional_float(values["last_failure_time"]),
            last_error=values["last_error"],
            calls=int(values["calls"]),
            total_failures=int(values["total_failures"]),
            total_successes=int(values["total_successes"]),
            rejections=int(values["rejections"]),
            generation=int(values["gen"]),
            probes=int(probes),
            policy=self._policy_from(values),
            server_now=float(now),
        )
        with self._lock:
            self._snapshot = snapshot
            self._snapshot_at = time.monotonic()
            self._refresh_started = -math.inf
            recovered, self._in_outage = self._in_outage, False
        if recovered:
            logger.info("Breaker %r: Redis store reachable again; shared state resumed.", self.name)
        transition = None
        if _text(previous):
            transition = Transition(State(_text(previous)), State(_text(current)), snapshot.stats())
        return _Result(_text(code), float(retry), transition, _text(token), snapshot)

    def _policy_from(self, values: dict[str, str]) -> Policy:
        try:
            return Policy(
                enabled=values["enabled"] == "1",
                failure_threshold=int(values["failure_threshold"]),
                timeout_seconds=_number(values["timeout_seconds"]),
                half_open_max_calls=int(values["half_open_max_calls"]),
                success_threshold=int(values["success_threshold"]),
                override=Override(values["override"]),
            )
        except (KeyError, ValueError):
            # A hash edited by hand into nonsense: keep running on this process's policy.
            return self._seed

    def _due_unapplied(self, snapshot: Snapshot) -> Policy | None:
        """The policy ``configure`` could not deliver, if Redis should get it now.

        Only while the fleet still runs the policy it was saved over: a policy changed since by
        another process was saved later and wins, and the one held here is dropped.
        """
        with self._lock:
            policy, replaces = self._unapplied, self._unapplied_over
            if policy is None or replaces is None or snapshot.policy == replaces:
                return policy
            self._unapplied = self._unapplied_over = None
        logger.error(
            "Breaker %r: the policy saved while Redis was unreachable is dropped, another process "
            "changed the fleet's policy since (now %s); save it again if it should apply.",
            self.name,
            snapshot.policy.as_dict(),
        )
        return None

    def _deliver_unapplied(self, snapshot: Snapshot) -> None:
        policy = self._due_unapplied(snapshot)
        if policy is None:
            return
        try:
            self._run("configure", policy=policy)
        except BackendUnavailable:
            return  # still unapplied: the next round trip that succeeds tries again
        self._delivered(policy)

    async def _adeliver_unapplied(self, snapshot: Snapshot) -> None:
        policy = self._due_unapplied(snapshot)
        if policy is None:
            return
        try:
            await self._arun("configure", policy=policy)
        except BackendUnavailable:
            return
        self._delivered(policy)

    def _delivered(self, policy: Policy) -> None:
        with self._lock:
            if self._unapplied is policy:
                self._unapplied = self._unapplied_over = None
                self._seed = policy
        logger.info(
            "Breaker %r: the policy saved while Redis was unreachable is applied now: %s.",
            self.name,
            policy.as_dict(),
        )

    def poll(self) -> None:
        """Refresh a stale snapshot now, without ever blocking a running event loop.

        For callers that read ``policy`` without calling (a disabled breaker is bypassed, so
        nothing else would learn it was enabled again). Outside an event loop this is one
        round trip; inside one the refresh is scheduled on the loop and the caller goes on
        with the current snapshot.
        """
        with self._lock:
            now = time.monotonic()
            stale = now - self._snapshot_at > self.snapshot_max_age
            if not stale or self._refresh_in_flight(now) or self._is_down():
                return
            self._refresh_started = now
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            try:
                self._run("read")
            except BackendUnavailable:
                pass  # logged by _failed; the snapshot stays as it was
            finally:
                self._done_refreshing()
            return
        task = loop.create_task(self._apoll())
        self._tasks.add(task)  # a task nobody references may be collected before it runs
        task.add_done_callback(self._apoll_done)

    async def _apoll(self) -> None:
        try:
            await self._arun("read")
        except BackendUnavailable:
            pass
        finally:
            self._done_refreshing()

    def _apoll_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            # Possibly before its first step (a loop shutting down cancels whatever is pending),
            # in which case the ``finally`` of ``_apoll`` never ran.
            self._done_refreshing()

    def _done_refreshing(self) -> None:
        with self._lock:
            self._refresh_started = -math.inf

    # ------------------------------------------------------------------ the Store protocol

    def acquire(self) -> Admission:
        if self._is_down():
            return self._fallback.acquire()
        try:
            admission = self._decide_locally()
            if admission is not None:
                return admission
            try:
                result = self._run("acquire", token=secrets.token_hex(8))
            finally:
                self._done_refreshing()
            return result.admission()
        except BackendUnavailable:
            return self._fallback.acquire()

    async def aacquire(self) -> Admission:
        if self._is_down():
            return self._fallback.acquire()
        try:
            admission = self._decide_locally()
            if admission is not None:
                return admission
            try:
                result = await self._arun("acquire", token=secrets.token_hex(8))
            finally:
                self._done_refreshing()
            return result.admission()
        except BackendUnavailable:
            return self._fallback.acquire()

    def _settle_on_fallback(
        self, ticket: Ticket, outcome: Outcome, error: str
    ) -> Transition | None:
        # A Redis probe lease cannot be released without Redis (it expires there by itself);
        # the outcome still counts locally, as a call admitted while closed.
        kind = PermitKind.CLOSED if ticket.kind == PermitKind.PROBE else ticket.kind
        return self._fallback.settle(Ticket(kind, fallback=True), outcome, error)

    def settle(self, ticket: Ticket, outcome: Outcome, error: str = "") -> Transition | None:
        if ticket.fallback:
            return self._fallback.settle(ticket, outcome, error)
        if self._settles_locally(ticket, outcome):
            return None
        try:
            return self._run(_OPS[outcome], ticket=ticket, error=error).transition
        except BackendUnavailable:
            return self._settle_on_fallback(ticket, outcome, error)

    async def asettle(self, ticket: Ticket, outcome: Outcome, error: str = "") -> Transition | None:
        if ticket.fallback:
            return self._fallback.settle(ticket, outcome, error)
        if self._settles_locally(ticket, outcome):
            return None
        try:
            return (await self._arun(_OPS[outcome], ticket=ticket, error=error)).transition
        except BackendUnavailable:
            return self._settle_on_fallback(ticket, outcome, error)

    def stats(self) -> dict[str, Any]:
        """The fleet's stats; Redis unreachable, this process's fallback's (``store`` says so)."""
        try:
            return {**self._run("read").snapshot.stats(), "store": "redis"}
        except BackendUnavailable:
            return self._fallback.stats()

    async def astats(self) -> dict[str, Any]:
        try:
            return {**(await self._arun("read")).snapshot.stats(), "store": "redis"}
        except BackendUnavailable:
            return self._fallback.stats()

    # Operator actions change nothing in this process unless Redis took them: the fallback
    # follows the fleet (``_failed`` seeds it from the last snapshot), never a refused action.

    def reset(self) -> Transition | None:
        self._down_until = -math.inf  # an operator asked: try Redis now
        return self._run("reset").transition

    async def areset(self) -> Transition | None:
        self._down_until = -math.inf
        return (await self._arun("reset")).transition

    def configure(self, policy: Policy) -> None:
        self._down_until = -math.inf
        try:
            self._run("configure", policy=policy)
        except BackendUnavailable:
            with self._lock:
                if self._unapplied is None:
                    snapshot = self._snapshot
                    self._unapplied_over = snapshot.policy if snapshot is not None else None
                self._unapplied = policy
            raise
        with self._lock:
            self._seed = policy
            self._unapplied = self._unapplied_over = None  # this newer policy replaces it

    def set_override(self, override: Override) -> None:
        override = Override(override)
        self._down_until = -math.inf
        result = self._run("override", policy=replace(self.policy, override=override))
        with self._lock:
            self._seed = replace(self._seed, override=override)
            if self._unapplied is not None:
                # The operator's word is the latest: the unapplied policy carries it, and the
                # fleet's policy it is to replace now has it too.
                self._unapplied = replace(self._unapplied, override=override)
                if self._unapplied_over is not None:
                    self._unapplied_over = replace(self._unapplied_over, override=override)
        self._deliver_unapplied(result.snapshot)


_OPS = {Outcome.SUCCESS: "success", Outcome.FAILURE: "failure", Outcome.IGNORE: "ignore"}
# Round trips after which an unapplied policy waits: configure delivers one itself, and
# set_override first writes its override into it.
_DELIVER_THEMSELVES = frozenset({"configure", "override"})
