"""Where counters live: ``memory`` (one process) and ``redis`` (shared by the fleet).

Both implement ``check(hits, now_us=None)`` / ``acheck(...)`` with the same contract: every hit is
evaluated first; the check *commits* (every hit whose own verdict is "allowed" is recorded, once
per distinct key) only if no enforced hit was refused, so a request is counted against all of its
rules or none. Shadow hits never refuse a request. The answer is one ``Verdict`` per hit plus the
commit flag. Values here are named tuples: immutable like frozen dataclasses, and several times
cheaper to make, which matters on a path run for every request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from resilience.ratelimit.algorithms import Limit, Verdict


class Hit(NamedTuple):
    """One rule's part in a check: its storage key, algorithm and numbers."""

    key: str
    algorithm: str
    limit: Limit
    enforced: bool = True


class CheckResult(NamedTuple):
    verdicts: tuple[Verdict, ...]
    committed: bool


class Backend(Protocol):
    name: str

    def check(self, hits: Sequence[Hit], now_us: int | None = None) -> CheckResult: ...

    async def acheck(self, hits: Sequence[Hit], now_us: int | None = None) -> CheckResult: ...

    def reset(self, patterns: Sequence[str]) -> int: ...
