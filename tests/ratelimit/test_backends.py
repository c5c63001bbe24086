"""The backend contract, run against both backends with the same injected instants.

The Redis backend takes ``now_us`` only for tests like these (the middleware always lets the
script read the server clock), so one suite pins down both implementations of each algorithm.
"""

from __future__ import annotations

import pytest
import redis

from resilience.ratelimit.algorithms import MICROS, Limit, ceil_seconds
from resilience.ratelimit.backends import Hit
from resilience.ratelimit.backends.memory import MemoryBackend
from resilience.ratelimit.limiter import get_rate_limiter
from resilience.ratelimit.rules import ALGORITHMS

T0 = 28_333_333 * 60 * MICROS  # a minute-aligned instant: a fixed window starts here


@pytest.fixture
def store(backend):
    return get_rate_limiter().backend


def hit(key: str, algorithm: str, calls: int, window_s: float, enforced: bool = True) -> Hit:
    return Hit(f"rl:{{test}}:{key}", algorithm, Limit(calls, int(window_s * MICROS)), enforced)


def admitted(store, hits, at_us: int) -> bool:
    return store.check(hits, now_us=at_us).committed


@pytest.mark.parametrize("algorithm", ["sliding_window", "fixed_window", "token_bucket"])
def test_backend__admits_calls_then_refuses(store, algorithm):
    rule = [hit("a", algorithm, 3, 60)]
    results = [store.check(rule, now_us=T0 + i).verdicts[0] for i in range(4)]
    assert [v.allowed for v in results] == [True, True, True, False]
    assert [v.remaining for v in results] == [2, 1, 0, 0]
    assert results[-1].retry_after_us > 0


def test_backend__sliding_window_has_no_double_burst_at_window_edges(store):
    rule = [hit("edge", "sliding_window", 10, 60)]
    # Ten hits at the very end of one minute ...
    assert all(admitted(store, rule, T0 + 59 * MICROS + i) for i in range(10))
    # ... leave no room at the start of the next: any 60 s holds at most 10 admitted hits.
    for at in (T0 + 60 * MICROS, T0 + 61 * MICROS, T0 + 118 * MICROS):
        assert not admitted(store, rule, at)
    # Room comes back exactly when the first of the ten leaves the window.
    assert not admitted(store, rule, T0 + 119 * MICROS - 1)
    assert admitted(store, rule, T0 + 119 * MICROS + 1)


def test_backend__fixed_window_documents_its_double_burst(store):
    rule = [hit("fixed", "fixed_window", 10, 60)]
    assert all(admitted(store, rule, T0 + 59 * MICROS + i) for i in range(10))
    assert all(admitted(store, rule, T0 + 60 * MICROS + i) for i in range(10))
    assert not admitted(store, rule, T0 + 61 * MICROS)


@pytest.mark.parametrize(
    ("algorithm", "calls", "window_s"),
    [("sliding_window", 3, 10), ("fixed_window", 3, 10), ("token_bucket", 3, 10)],
)
def test_backend__retry_after_is_exact_never_early(store, algorithm, calls, window_s):
    rule = [hit("retry", algorithm, calls, window_s)]
    now = T0 + 1_234_567
    for i in range(calls):
        assert admitted(store, rule, now + i * 100_000)
    refused_at = now + calls * 100_000
    verdict = store.check(rule, now_us=refused_at).verdicts[0]
    assert not verdict.allowed
    assert not admitted(store, rule, refused_at + verdict.retry_after_us - 1)
    assert admitted(store, rule, refused_at + verdict.retry_after_us)
    # The header value rounds up, so a client waiting that long is never early.
    assert ceil_seconds(verdict.retry_after_us) * MICROS >= verdict.retry_after_us


def test_backend__token_bucket_allows_a_burst_then_one_per_interval(store):
    rule = [hit("gcra", "token_bucket", 4, 8)]  # one every 2 s, bursts of 4
    assert [admitted(store, rule, T0) for _ in range(5)] == [True] * 4 + [False]
    assert not admitted(store, rule, T0 + 2 * MICROS - 1)
    assert admitted(store, rule, T0 + 2 * MICROS)
    assert not admitted(store, rule, T0 + 2 * MICROS)


def test_backend__all_or_nothing_across_rules(store):
    per_minute = hit("a", "sliding_window", 5, 60)
    tight = hit("b", "token_bucket", 1, 60)
    result = store.check([per_minute, tight], now_us=T0)
    assert result.committed
    assert [v.remaining for v in result.verdicts] == [4, 0]
    # Refused by the tight rule: the per-minute rule must not be consumed.
    for i in range(1, 10):
        assert not store.check([per_minute, tight], now_us=T0 + i).committed
    alone = store.check([per_minute], now_us=T0 + 20)
    assert alone.committed
    assert alone.verdicts[0].remaining == 3


def test_backend__shadow_hits_never_refuse(store):
    enforced = hit("e", "sliding_window", 5, 60)
    shadow = hit("s", "sliding_window", 1, 60, enforced=False)
    results = [store.check([enforced, shadow], now_us=T0 + i) for i in range(3)]
    assert all(r.committed for r in results)
    assert [r.verdicts[1].allowed for r in results] == [True, False, False]
    assert results[-1].verdicts[0].remaining == 2


def test_backend__rules_sharing_a_counter_count_a_request_once(store):
    first = hit("shared", "sliding_window", 10, 60)
    second = hit("shared", "sliding_window", 3, 60)
    for i in range(3):
        assert admitted(store, [first, second], T0 + i)
    verdicts = store.check([first], now_us=T0 + 5).verdicts
    assert verdicts[0].remaining == 6  # three requests, counted once each


def test_backend__reset_forgets_counters(store):
    rule = [hit("r", "fixed_window", 1, 60)]
    assert admitted(store, rule, T0)
    assert not admitted(store, rule, T0 + 1)
    assert store.reset(["rl:{*}:r:*", "rl:{*}:r"]) >= 1
    assert admitted(store, rule, T0 + 2)


def test_redis_backend__every_key_gets_a_ttl(limiting, redis_backend, redis_client):
    store = get_rate_limiter().backend
    hits = [
        hit("ttl-s", "sliding_window", 5, 60),
        hit("ttl-f", "fixed_window", 5, 60),
        hit("ttl-t", "token_bucket", 5, 60),
    ]
    assert store.check(hits).committed  # server time, as in production
    keys = redis_client.keys("rl:*")
    assert len(keys) == 3
    assert all(0 < redis_client.pttl(key) <= 61_000 for key in keys)
    # The sliding log is stamped with the server's clock, to the microsecond.
    seconds, micros = redis_client.time()
    ((_member, score),) = redis_client.zrange("rl:{test}:ttl-s", 0, -1, withscores=True)
    assert 0 <= seconds * MICROS + micros - score < 2 * MICROS


def test_memory_backend__is_bounded():
    memory = MemoryBackend(max_keys=50)
    for i in range(200):
        memory.check([hit(f"k{i}", "sliding_window", 1, 60)], now_us=T0)
    assert len(memory) == 50


def test_redis_backend__is_one_round_trip_whatever_the_rules(limiting, private_redis_backend):
    # A server of our own: INFO commandstats counts every client of a server.
    store = get_rate_limiter().backend
    client = redis.Redis(port=private_redis_backend.port)
    hits = [hit(f"n{i}", algorithm, 5, 60) for i, algorithm in enumerate(ALGORITHMS)]
    store.check(hits)  # loads the script
    client.config_resetstat()
    store.check(hits)
    stats = client.info("commandstats")
    client.close()
    top_level = {name for name in stats if not name.startswith("cmdstat_config")}
    assert stats["cmdstat_evalsha"]["calls"] == 1
    # Everything else ran inside the script (INFO itself is the only other top-level command).
    inside = {
        "zremrangebyscore",
        "zcard",
        "zadd",
        "pexpire",
        "time",
        "hmget",
        "hset",
        "get",
        "set",
        "evalsha",
        "info",
    }
    assert {name.removeprefix("cmdstat_") for name in top_level} <= inside
