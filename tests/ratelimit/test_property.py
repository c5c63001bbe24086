"""Memory and Redis give the same answers for the same hits at the same instants.

Hypothesis draws a few rules (any algorithm, small limits and windows) and a sequence of requests,
each hitting a subset of the rules after a random pause; both backends get the same sequence
with the same injected instants (the Redis script uses ``now_us`` instead of ``TIME`` only when
given one) and must agree on every verdict and on every commit. Pauses mix round values (to land
on window edges exactly) with odd microsecond offsets.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilience.ratelimit.algorithms import MICROS, Limit
from resilience.ratelimit.backends import Hit
from resilience.ratelimit.backends.memory import MemoryBackend
from resilience.ratelimit.backends.redis import RedisBackend
from resilience.ratelimit.rules import ALGORITHMS

START = 28_333_333 * 60 * MICROS
_examples = itertools.count()

rule_strategy = st.tuples(
    st.sampled_from(ALGORITHMS),
    st.integers(1, 4),  # calls
    st.sampled_from([1, 2, 3, 7]),  # window seconds
    st.booleans(),  # enforced
)
pause_strategy = st.one_of(
    st.sampled_from([0, 1, MICROS // 2, MICROS, 2 * MICROS, 3 * MICROS, 7 * MICROS]),
    st.integers(0, 4 * MICROS),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rules=st.lists(rule_strategy, min_size=1, max_size=3),
    steps=st.lists(
        st.tuples(pause_strategy, st.lists(st.integers(0, 2), min_size=1, max_size=3)),
        min_size=1,
        max_size=25,
    ),
)
def test_backends__memory_and_redis_agree(limiting, redis_backend, rules, steps):
    example = next(_examples)
    hits = [
        Hit(f"rl:{{prop{example}}}:{i}:{alg}", alg, Limit(calls, window * MICROS), enforced)
        for i, (alg, calls, window, enforced) in enumerate(rules)
    ]
    memory, shared = MemoryBackend(), RedisBackend("default")
    now = START + example * 1000 * MICROS
    for pause, picks in steps:
        now += pause
        chosen = [hits[p % len(hits)] for p in picks]
        expected = memory.check(chosen, now_us=now)
        actual = shared.check(chosen, now_us=now)
        assert actual == expected, (now - START, chosen)
