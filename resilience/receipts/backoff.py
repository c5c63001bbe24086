"""When to try a receipt again: exponential backoff with full jitter, never before ``Retry-After``.

After the n-th failed attempt (n >= 1) the delay is drawn uniformly from
``[0, min(cap, base * 2 ** (n - 1))]`` ("full jitter"): drainers that failed together spread out
instead of retrying in lockstep against a MemoryGate that is just coming back. When MemoryGate
named a ``Retry-After`` the delay is at least that long.
"""

from __future__ import annotations

import random
from collections.abc import Callable

BASE_SECONDS = 1.0
CAP_SECONDS = 900.0


def retry_delay(
    attempts: int,
    retry_after: float | None = None,
    *,
    base: float = BASE_SECONDS,
    cap: float = CAP_SECONDS,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds to wait before the next attempt, ``attempts`` being the attempts made so far."""
    exponent = min(max(attempts - 1, 0), 32)  # 2**32 s is far past any cap
    delay = uniform(0.0, min(cap, base * 2**exponent))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay
