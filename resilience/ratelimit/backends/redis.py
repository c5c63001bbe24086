"""Counters in Redis, shared by every worker: one Lua script per request, whatever the rules.

The script (``CHECK_SCRIPT``) is ``algorithms.py`` translated line by line, run atomically on the
server: it evaluates every rule of the request, then records the hit on all of them or none, and
returns every verdict. So a request costs one round trip (``EVALSHA``), two workers can never both
take the last slot, and a request refused by one rule consumes nothing from the others.

Time is the Redis server's (``redis.call('TIME')``), so app servers with skewed clocks agree.
For tests the caller may pass ``now_us``; the script then uses it instead of ``TIME``, which is
how the property test feeds the same instants to this backend and to the memory backend. The
middleware never passes it.

Every key written gets a TTL (the time its state stays meaningful, plus a second). Keys carry the
client's identity hash as their hash tag, so a check whose rules key on one identity (the usual
case) lies in one slot and also runs on Redis Cluster (see ``keys.py`` for mixed identities).

Numbers: Lua holds integers exactly up to 2**53; microseconds since the epoch are about 2**51.
Timestamps written back to Redis are formatted with ``%.0f`` (or kept as the strings ``TIME``
returned) because Lua's default number format keeps only 14 significant digits; small numbers
(TTLs, counts, at most 14 digits) go as they are. Window starts use ``math.fmod``, which is exact.

Errors (unreachable server, timeouts, a server refusing the script) become ``BackendUnavailable``;
the limiter then fails open or closed per settings. The async path uses ``redis.asyncio`` through
``resilience.redis.async_script``, never django-redis's thread-wrapping async methods.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Sequence

import redis

from resilience.exceptions import BackendUnavailable
from resilience.ratelimit.algorithms import Verdict
from resilience.ratelimit.backends import CheckResult, Hit
from resilience.redis import (
    REDIS_ERRORS,
    async_script,
    get_sync_client,
    sync_script,
    translate_errors,
)

ALGORITHM_CODES = {"sliding_window": "s", "fixed_window": "f", "token_bucket": "t"}
ARGS_PER_HIT = 4

CHECK_SCRIPT = """
local now, nowstr
if ARGV[1] ~= '' then
  nowstr = ARGV[1]
  now = tonumber(nowstr)
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  nowstr = t[1] .. string.sub('00000' .. t[2], -6)
end
local token = ARGV[2]
local n = #KEYS
local out = {}
local saved = {}
local ok = true
for i = 1, n do
  local key = KEYS[i]
  local base = 2 + (i - 1) * 4
  local alg = ARGV[base + 1]
  local calls = tonumber(ARGV[base + 2])
  local window = tonumber(ARGV[base + 3])
  local allowed, remaining, reset, retry
  if alg == 's' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.0f', now - window))
    local count = redis.call('ZCARD', key)
    if count < calls then
      allowed, remaining, reset, retry = 1, calls - count - 1, window, 0
    else
      local freeing = redis.call('ZRANGE', key, count - calls, count - calls, 'WITHSCORES')
      local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
      allowed, remaining = 0, 0
      reset = tonumber(newest[2]) + window - now
      retry = tonumber(freeing[2]) + window - now
    end
  elseif alg == 'f' then
    local start = now - math.fmod(now, window)
    local stored = redis.call('HMGET', key, 's', 'c')
    local count = 0
    if stored[1] and tonumber(stored[1]) == start then count = tonumber(stored[2]) end
    saved[i] = {start, count}
    local left = start + window - now
    if count < calls then
      allowed, remaining, reset, retry = 1, calls - count - 1, left, 0
    else
      allowed, remaining, reset, retry = 0, 0, left, left
    end
  else
    local interval = (window - math.fmod(window, calls)) / calls
    if math.fmod(window, calls) > 0 then interval = interval + 1 end
    local burst = interval * calls
    local tat = tonumber(redis.call('GET', key) or now)
    if tat < now then tat = now end
    saved[i] = tat + interval
    local ahead = tat + interval - now
    if ahead <= burst then
      allowed, remaining, reset, retry = 1, math.floor((burst - ahead) / interval), ahead, 0
    else
      allowed, remaining, reset, retry = 0, 0, tat - now, ahead - burst
    end
  end
  if allowed == 0 and ARGV[base + 4] == '1' then ok = false end
  out[#out + 1] = allowed
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end
if ok then
  local done = {}
  for i = 1, n do
    local key = KEYS[i]
    if out[(i - 1) * 4 + 1] == 1 and not done[key] then
      done[key] = true
      local base = 2 + (i - 1) * 4
      local alg = ARGV[base + 1]
      local window = tonumber(ARGV[base + 3])
      if alg == 's' then
        redis.call('ZADD', key, nowstr, nowstr .. ':' .. token .. ':' .. i)
        redis.call('PEXPIRE', key, math.ceil(window / 1000) + 1000)
      elseif alg == 'f' then
        local start, count = saved[i][1], saved[i][2]
        redis.call('HSET', key, 's', string.format('%.0f', start), 'c', count + 1)
        redis.call('PEXPIRE', key, math.ceil((start + window - now) / 1000) + 1000)
      else
        redis.call('SET', key, string.format('%.0f', saved[i]),
                   'PX', math.ceil((saved[i] - now) / 1000) + 1000)
      end
    end
  end
end
out[#out + 1] = ok and 1 or 0
return out
"""


class _MemberNames:
    """Unique sliding-log member suffixes: a random per-process token and a counter."""

    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        self.token = secrets.token_hex(4)
        self.counter = itertools.count()

    def next(self) -> str:
        return f"{self.token}{next(self.counter)}"


_members = _MemberNames()
# A forked worker must not reuse its parent's sliding-log member names.
os.register_at_fork(after_in_child=_members.renew)


class RedisBackend:
    """Counters in the Redis behind the django-redis cache ``alias``."""

    name = "redis"

    def __init__(self, alias: str) -> None:
        self.alias = alias
        # The registered script on django-redis's (thread-safe, pooled) client, looked up once:
        # the lookup costs more than building the call. A new backend is made when CACHES change.
        self._script = None

    @staticmethod
    def _encode(hits: Sequence[Hit], now_us: int | None) -> tuple[list[str], list[object]]:
        args: list[object] = ["" if now_us is None else now_us, _members.next()]
        for hit in hits:
            args += (
                ALGORITHM_CODES[hit.algorithm],
                hit.limit.calls,
                hit.limit.window_us,
                1 if hit.enforced else 0,
            )
        return [hit.key for hit in hits], args

    @staticmethod
    def _decode(raw: list[int]) -> CheckResult:
        if len(raw) == ARGS_PER_HIT + 1:  # one hit, the common case
            return CheckResult((Verdict(raw[0] == 1, raw[1], raw[2], raw[3]),), raw[4] == 1)
        verdicts = tuple(
            Verdict(raw[i] == 1, raw[i + 1], raw[i + 2], raw[i + 3])
            for i in range(0, len(raw) - 1, ARGS_PER_HIT)
        )
        return CheckResult(verdicts, raw[-1] == 1)

    def check(self, hits: Sequence[Hit], now_us: int | None = None) -> CheckResult:
        keys, args = self._encode(hits, now_us)
        # ``translate_errors``'s work, done without its context manager: this runs on every
        # request, and entering a generator-based context manager costs more than the rest of
        # this method's Python.
        try:
            script = self._script
            if script is None:
                script = self._script = sync_script(self.alias, CHECK_SCRIPT)
            raw = script(keys=keys, args=args)
        except REDIS_ERRORS as exc:
            message = f"Redis for cache {self.alias!r} is unreachable: {exc}"
            raise BackendUnavailable(message) from exc
        except redis.exceptions.RedisError as exc:
            raise BackendUnavailable(f"Redis for cache {self.alias!r} failed: {exc}") from exc
        return self._decode(raw)

    async def acheck(self, hits: Sequence[Hit], now_us: int | None = None) -> CheckResult:
        keys, args = self._encode(hits, now_us)
        try:
            raw = await async_script(self.alias, CHECK_SCRIPT)(keys=keys, args=args)
        except REDIS_ERRORS as exc:
            message = f"Redis for cache {self.alias!r} is unreachable: {exc}"
            raise BackendUnavailable(message) from exc
        except redis.exceptions.RedisError as exc:
            raise BackendUnavailable(f"Redis for cache {self.alias!r} failed: {exc}") from exc
        return self._decode(raw)

    def reset(self, patterns: Sequence[str]) -> int:
        """Delete every key matching one of the glob ``patterns`` (SCAN, never KEYS)."""
        client = get_sync_client(self.alias)
        deleted = 0
        try:
            with translate_errors(self.alias):
                for pattern in patterns:
                    batch: list[bytes] = []
                    for key in client.scan_iter(match=pattern, count=1000):
                        batch.append(key)
                        if len(batch) >= 500:
                            deleted += client.unlink(*batch)
                            batch = []
                    if batch:
                        deleted += client.unlink(*batch)
        except redis.exceptions.RedisError as exc:
            raise BackendUnavailable(f"Redis for cache {self.alias!r} failed: {exc}") from exc
        return deleted
