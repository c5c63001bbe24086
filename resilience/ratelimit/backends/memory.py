"""Counters in this process's memory: for development and single-process servers only.

Every worker process has its own counters, so under N workers a client gets up to N times the
limit; use the ``redis`` backend whenever more than one process serves requests.

Thread-safe and async-safe: one check (evaluate every hit, then commit all or none) runs under a
``threading.Lock`` and contains no I/O and no ``await``, so neither threads nor coroutines
interleave inside it and the async entry point never blocks the loop for more than the check.

Bounded: at most ``max_keys`` counters are held; the least recently used counter is evicted when
the table is full, and an expired counter is read as empty when next touched. Evicting a live
counter forgets its hits, so size the bound above the number of clients active within a window;
a client inventing identities (made-up API keys, addresses across an IPv6 /64 range) can push
others' counters out, one more reason this backend is for development only.
"""

from __future__ import annotations

import fnmatch
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from resilience.ratelimit.algorithms import CONSUME, EVALUATE, Verdict, initial_state
from resilience.ratelimit.backends import CheckResult, Hit

DEFAULT_MAX_KEYS = 100_000


def wall_clock_us() -> int:
    return time.time_ns() // 1000


class MemoryBackend:
    """In-process counters; ``clock`` returns integer microseconds (injectable for tests)."""

    name = "memory"

    def __init__(
        self, max_keys: int = DEFAULT_MAX_KEYS, clock: Callable[[], int] = wall_clock_us
    ) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self._lock = threading.Lock()
        self._states: OrderedDict[str, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def check(self, hits: Sequence[Hit], now_us: int | None = None) -> CheckResult:
        now = self.clock() if now_us is None else now_us
        states = self._states
        if len(hits) == 1:
            # The common case, without the bookkeeping: with one hit, all-or-nothing reduces to
            # "record it if it is allowed"; a refused shadow hit still commits (it refuses
            # nothing).
            key, algorithm, limit, enforced = hits[0]
            with self._lock:
                state = self._touch(key, algorithm)
                verdict = EVALUATE[algorithm](state, limit, now)
                if verdict.allowed:
                    states[key] = CONSUME[algorithm](state, limit, now)
                while len(states) > self.max_keys:
                    states.popitem(last=False)
            return CheckResult((verdict,), verdict.allowed or not enforced)
        with self._lock:
            verdicts: list[Verdict] = []
            committed = True
            for key, algorithm, limit, enforced in hits:
                verdict = EVALUATE[algorithm](self._touch(key, algorithm), limit, now)
                verdicts.append(verdict)
                if enforced and not verdict.allowed:
                    committed = False
            if committed:
                done: set[str] = set()
                for (key, algorithm, limit, _), verdict in zip(hits, verdicts, strict=True):
                    if verdict.allowed and key not in done:
                        done.add(key)
                        states[key] = CONSUME[algorithm](states[key], limit, now)
            while len(states) > self.max_keys:
                states.popitem(last=False)
        return CheckResult(tuple(verdicts), committed)

    def _touch(self, key: str, algorithm: str) -> Any:
        """The counter's state, made most recently used (created when new). Call under the lock.

        An expired counter needs no special case: each algorithm's ``evaluate`` reads stale
        state as empty (the sliding log drops hits that left the window, a fixed window from
        an earlier period counts nothing, a token-bucket time in the past is "now").
        """
        states = self._states
        state = states.get(key)
        if state is None:
            state = states[key] = initial_state(algorithm)
        else:
            states.move_to_end(key)
        return state

    async def acheck(self, hits: Sequence[Hit], now_us: int | None = None) -> CheckResult:
        return self.check(hits, now_us)

    def reset(self, patterns: Sequence[str]) -> int:
        """Forget every counter whose key matches one of the glob ``patterns``."""
        regex = re.compile("|".join(fnmatch.translate(p) for p in patterns))
        with self._lock:
            doomed = [key for key in self._states if regex.match(key)]
            for key in doomed:
                del self._states[key]
        return len(doomed)
