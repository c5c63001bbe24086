"""Where a breaker's state lives: ``MemoryStore`` (one process) or ``RedisStore`` (the fleet).

Both implement ``Store``: the breaker asks a store to admit a call (``acquire``), to record its
outcome (``settle``), and for ``stats``, ``reset`` and policy changes. Each method that may do
I/O has an ``a``-prefixed twin that does no blocking I/O on the event loop.
"""

from __future__ import annotations

from typing import Any, Protocol

from resilience.breaker.machine import Admission, Outcome, Override, Policy, Ticket, Transition


class Store(Protocol):
    name: str

    @property
    def policy(self) -> Policy:
        """The policy in force as last seen by this process (no I/O)."""

    @property
    def unapplied_policy(self) -> Policy | None:
        """A policy ``configure`` could not deliver yet (the store retries it), else None."""

    def poll(self) -> None:
        """Refresh a stale view of a shared state, never blocking a running event loop."""

    def acquire(self) -> Admission: ...

    async def aacquire(self) -> Admission: ...

    def settle(self, ticket: Ticket, outcome: Outcome, error: str = "") -> Transition | None: ...

    async def asettle(
        self, ticket: Ticket, outcome: Outcome, error: str = ""
    ) -> Transition | None: ...

    def stats(self) -> dict[str, Any]: ...

    async def astats(self) -> dict[str, Any]: ...

    def reset(self) -> Transition | None: ...

    async def areset(self) -> Transition | None: ...

    def configure(self, policy: Policy) -> None:
        """Apply a saved policy (thresholds, ``enabled``, override) without touching the state.

        Raises ``BackendUnavailable`` when the shared store cannot be reached; the store then
        keeps the policy as ``unapplied_policy`` and delivers it once the store answers again.
        """

    def set_override(self, override: Override) -> None: ...
