"""Breaker state in process memory: one ``Circuit`` under a lock, for one process.

Every operation takes the lock, applies the pure transition of ``machine.Circuit`` and releases
it; nothing blocks while the lock is held, so the async twins simply call the sync methods. The
clock (wall-clock seconds) is injectable so tests drive time. Other processes never see this
state: it serves development (``RATE_LIMIT_BACKEND = "memory"``) and the Redis store's fallback,
which ``adopt`` puts in the fleet's last known state when Redis stops answering. Its stats then
say ``store: "memory-fallback"``: one worker's own view, not the fleet's.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from resilience.breaker.machine import (
    DEFAULT_PROBE_LEASE_SECONDS,
    Admission,
    Circuit,
    Outcome,
    Override,
    Policy,
    Ticket,
    Transition,
)

# The ``store`` of a fallback's stats: readers must not present them as the fleet's state.
FALLBACK_STORE = "memory-fallback"


def _new_token() -> str:
    return secrets.token_hex(8)


class MemoryStore:
    kind = "memory"

    def __init__(
        self,
        name: str,
        policy: Policy,
        *,
        clock: Callable[[], float] = time.time,
        probe_lease_seconds: float = DEFAULT_PROBE_LEASE_SECONDS,
        fallback: bool = False,
    ) -> None:
        self.name = name
        self.clock = clock
        self.probe_lease_seconds = probe_lease_seconds
        self._fallback = fallback
        self._circuit = Circuit(policy, state_since=clock())
        self._lock = threading.Lock()

    @property
    def policy(self) -> Policy:
        return self._circuit.policy

    @property
    def unapplied_policy(self) -> Policy | None:
        """Always None: ``configure`` applies at once."""
        return None

    def poll(self) -> None:
        """Nothing to refresh: this process is the only writer."""

    def acquire(self) -> Admission:
        with self._lock:
            admission = self._circuit.acquire(self.clock(), _new_token, self.probe_lease_seconds)
        if self._fallback and admission.ticket is not None:
            return replace(admission, ticket=replace(admission.ticket, fallback=True))
        return admission

    async def aacquire(self) -> Admission:
        return self.acquire()

    def settle(self, ticket: Ticket, outcome: Outcome, error: str = "") -> Transition | None:
        with self._lock:
            return self._circuit.settle(ticket, outcome, error, self.clock())

    async def asettle(self, ticket: Ticket, outcome: Outcome, error: str = "") -> Transition | None:
        return self.settle(ticket, outcome, error)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            stats = self._circuit.stats(self.clock())
        stats["store"] = FALLBACK_STORE if self._fallback else "memory"
        return stats

    async def astats(self) -> dict[str, Any]:
        return self.stats()

    def reset(self) -> Transition | None:
        with self._lock:
            return self._circuit.reset(self.clock())

    async def areset(self) -> Transition | None:
        return self.reset()

    def configure(self, policy: Policy) -> None:
        with self._lock:
            self._circuit.policy = policy

    def adopt(self, view: Any) -> None:
        """Take over the state and policy of ``view`` (a Redis store's last snapshot).

        Probes this store admitted before belong to an earlier half-open period from now on, so
        their outcomes only count in the totals.
        """
        with self._lock:
            epoch = self._circuit.probe_epoch + 1
            self._circuit = Circuit.from_view(view, probe_epoch=epoch)

    def set_override(self, override: Override) -> None:
        with self._lock:
            self._circuit.policy = replace(self._circuit.policy, override=Override(override))
