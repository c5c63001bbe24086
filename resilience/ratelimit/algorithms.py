"""The three limiting algorithms as pure functions of (state, rule, now), in integer microseconds.

The memory backend runs these functions; the Redis backend runs their line-by-line translation
in Lua (``backends/redis.py``). Both work on integer microseconds (a Lua number holds integers
exactly up to 2**53, and today's epoch in microseconds is about 2**51), so the two give the same
answer for the same hits at the same instants: a property test holds them together.

Only admitted hits are recorded. A client that keeps hammering while blocked is not pushed
further back; it gets in again exactly when the algorithm says so, and ``retry_after_us`` says
when that is. Every check is split into ``evaluate`` (no change to the answer's state) and
``consume`` (record an admitted hit), so a request limited by several rules can be checked
against all of them first and counted against all of them or none.

Sliding window (sliding log), the default. Exact: a request is admitted iff fewer than ``calls``
admitted hits lie in ``(now - window, now]``. There is no burst at window edges because there are
no edges: any interval of ``window`` seconds holds at most ``calls`` admitted hits. Memory is
O(calls) per client and rule (the log of admitted hits still inside the window).

Fixed window. Windows are aligned on multiples of ``window`` since the epoch; a request is
admitted iff fewer than ``calls`` hits were admitted in the current window. Exact within a window,
but a client may send ``calls`` at the end of one window and ``calls`` at the start of the next
(up to 2x ``calls`` in ``window`` seconds across an edge). O(1) memory.

Token bucket (GCRA). Each admitted hit advances a "theoretical arrival time" (TAT) by one
emission interval ``T = ceil(window / calls)``; a hit is admitted iff the new TAT is at most
``calls * T`` ahead of now. So a full bucket admits a burst of ``calls`` at once, then one hit
every ``T``. Exact in integer microseconds, except that ``T`` is rounded up to a whole microsecond:
the effective window is at most ``calls`` microseconds longer, never shorter (errs strict). O(1)
memory.

Time until the next admission (``retry_after_us``) is exact for each algorithm; the limiter
rounds it up to whole seconds for ``Retry-After``, so a client that waits that long is never
refused early. ``reset_us`` is the time until the full quota is available again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

MICROS = 1_000_000


class Verdict(NamedTuple):
    """One rule's answer for one hit (a named tuple: immutable, and cheap on the request path)."""

    allowed: bool
    remaining: int
    reset_us: int
    retry_after_us: int


@dataclass(frozen=True, slots=True)
class Limit:
    """The numbers an algorithm needs: ``calls`` per ``window_us`` microseconds."""

    calls: int
    window_us: int

    @property
    def interval_us(self) -> int:
        """GCRA emission interval, rounded up to a whole microsecond."""
        return -(-self.window_us // self.calls)


def ceil_seconds(micros: int) -> int:
    return max(0, -(-micros // MICROS))


# Sliding log: state is a deque of admitted-hit instants, oldest first.


def sliding_evaluate(log: deque[int], limit: Limit, now: int) -> Verdict:
    """Drops hits that left the window (they can never count again), then answers."""
    horizon = now - limit.window_us
    while log and log[0] <= horizon:
        log.popleft()
    count = len(log)
    if count < limit.calls:
        return Verdict(True, limit.calls - count - 1, limit.window_us, 0)
    # One more fits once the hit at index count - calls has left the window. (count can exceed
    # calls when staff lowered the limit; the log then drains before anyone gets in.)
    freeing = log[count - limit.calls]
    return Verdict(False, 0, log[-1] + limit.window_us - now, freeing + limit.window_us - now)


def sliding_consume(log: deque[int], limit: Limit, now: int) -> deque[int]:
    log.append(now)
    return log


# Fixed window: state is (window start, admitted hits in that window).


def fixed_evaluate(state: tuple[int, int] | None, limit: Limit, now: int) -> Verdict:
    start = now - now % limit.window_us
    count = state[1] if state is not None and state[0] == start else 0
    left = start + limit.window_us - now
    if count < limit.calls:
        return Verdict(True, limit.calls - count - 1, left, 0)
    return Verdict(False, 0, left, left)


def fixed_consume(state: tuple[int, int] | None, limit: Limit, now: int) -> tuple[int, int]:
    start = now - now % limit.window_us
    count = state[1] if state is not None and state[0] == start else 0
    return (start, count + 1)


# GCRA: state is the theoretical arrival time (TAT).


def gcra_evaluate(tat: int | None, limit: Limit, now: int) -> Verdict:
    interval = limit.interval_us
    burst = interval * limit.calls
    tat = now if tat is None or tat < now else tat
    new_tat = tat + interval
    ahead = new_tat - now
    if ahead <= burst:
        return Verdict(True, (burst - ahead) // interval, ahead, 0)
    return Verdict(False, 0, tat - now, ahead - burst)


def gcra_consume(tat: int | None, limit: Limit, now: int) -> int:
    tat = now if tat is None or tat < now else tat
    return tat + limit.interval_us


EVALUATE = {
    "sliding_window": sliding_evaluate,
    "fixed_window": fixed_evaluate,
    "token_bucket": gcra_evaluate,
}
CONSUME = {
    "sliding_window": sliding_consume,
    "fixed_window": fixed_consume,
    "token_bucket": gcra_consume,
}


def initial_state(algorithm: str):
    return deque() if algorithm == "sliding_window" else None
