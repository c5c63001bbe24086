"""The app's exceptions. Third-party errors (redis, httpx) are translated into these at the edge."""

from __future__ import annotations


class ResilienceError(Exception):
    """Base of every error this app raises on purpose."""


class BackendUnavailable(ResilienceError):
    """The shared store (Redis) could not be reached; callers fall back or fail per settings."""
