"""The app's exceptions. Third-party errors (redis, httpx) are translated into these at the edge."""

from __future__ import annotations


class ResilienceError(Exception):
    """Base of every error this app raises on purpose."""


class BackendUnavailable(ResilienceError):
    """The shared store (Redis) could not be reached; callers fall back or fail per settings."""


class CircuitOpen(ResilienceError):
    """A call was refused because the named circuit is open; ``retry_after`` is in seconds."""

    def __init__(self, name: str, retry_after: float) -> None:
        self.name = name
        self.retry_after = max(0.0, retry_after)
        super().__init__(f"Circuit {name!r} is open; retry in {self.retry_after:.1f} s.")


class DeliveryError(ResilienceError):
    """MemoryGate could not be used for delivery (misconfigured, e.g. ``MEMORYGATE_URL`` unset)."""
