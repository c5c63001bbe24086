"""The only reader of ``settings.RESILIENCE``.

Every key, its default and its unit live in ``DEFAULTS`` below and nowhere else. Values are read
lazily on first use (never at import), cached, and the cache is dropped on ``setting_changed`` so
``override_settings`` in tests behaves. A key we do not know is an error rather than something we
quietly ignore: a typo in a switch must not leave a limiter silently off.

Usage::

    from resilience.conf import resilience_settings
    if resilience_settings.RATE_LIMIT_ENABLED: ...
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULTS: dict[str, Any] = {
    # Master switch for RateLimitMiddleware.
    "RATE_LIMIT_ENABLED": False,
    # "memory" (one process, development) or "redis" (shared by every worker, production).
    "RATE_LIMIT_BACKEND": "memory",
    # The django-redis cache alias whose client holds counters and breaker state.
    "RATE_LIMIT_CACHE_ALIAS": "default",
    # Limit for requests that no rule matches; None means unmatched paths are not limited.
    "RATE_LIMIT_DEFAULT_CALLS": 100,
    # Window of the default limit, in seconds.
    "RATE_LIMIT_DEFAULT_WINDOW_SECONDS": 60,
    # Path prefixes never limited, so staff cannot lock themselves out of the admin.
    "RATE_LIMIT_EXEMPT_PATHS": ("/admin/", "/static/", "/v1/health"),
    # Redis unreachable: True lets requests through (and logs), False answers 429/503.
    "RATE_LIMIT_FAIL_OPEN": True,
    # CIDRs whose X-Forwarded-For header is believed; otherwise REMOTE_ADDR is the client.
    "RATE_LIMIT_TRUSTED_PROXIES": (),
    # Base URL of MemoryGate; None buffers every receipt.
    "MEMORYGATE_URL": None,
    # Sent as "Authorization: Bearer ..."; never logged, never shown.
    "MEMORYGATE_API_KEY": None,
    # Per-request timeout to MemoryGate, in seconds.
    "MEMORYGATE_TIMEOUT_SECONDS": 0.5,
    # Whether calls to MemoryGate go through the circuit breaker at all.
    "MEMORYGATE_CIRCUIT_BREAKER_ENABLED": True,
    # The next four seed the "memorygate" BreakerPolicy row; staff edit the row afterwards.
    # Consecutive failures that open the circuit.
    "MEMORYGATE_CIRCUIT_BREAKER_FAILURE_THRESHOLD": 5,
    # Seconds the circuit stays OPEN before a probe is let through.
    "MEMORYGATE_CIRCUIT_BREAKER_TIMEOUT_SECONDS": 60,
    # Probes in flight at once while HALF_OPEN, fleet-wide.
    "MEMORYGATE_CIRCUIT_BREAKER_HALF_OPEN_MAX_CALLS": 3,
    # Consecutive probe successes that close the circuit.
    "MEMORYGATE_CIRCUIT_BREAKER_SUCCESS_THRESHOLD": 2,
    # Bearer token that lets a scraper read the metrics endpoint; None: staff sessions only.
    # Compared in constant time, never logged.
    "METRICS_TOKEN": None,
}


_STRING_LISTS = ("RATE_LIMIT_EXEMPT_PATHS", "RATE_LIMIT_TRUSTED_PROXIES")


class ResilienceSettings:
    """Attribute access to ``RESILIENCE`` merged over ``DEFAULTS``, computed once per change."""

    def __init__(self) -> None:
        self._merged: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        user = getattr(settings, "RESILIENCE", None) or {}
        if not isinstance(user, dict):
            raise ImproperlyConfigured("settings.RESILIENCE must be a dict.")
        unknown = sorted(set(user) - set(DEFAULTS))
        if unknown:
            raise ImproperlyConfigured(
                f"Unknown key(s) in settings.RESILIENCE: {', '.join(unknown)}. "
                f"Known keys: {', '.join(sorted(DEFAULTS))}."
            )
        for key in _STRING_LISTS:
            value = user.get(key, ())
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                # A bare string would be read character by character: "/admin/" as an exempt
                # "list" would exempt every path, since every path starts with "/".
                raise ImproperlyConfigured(
                    f"settings.RESILIENCE[{key!r}] is {value!r}; it must be a list or tuple of "
                    f'strings (a single item is written ["{value}"]).'
                    if isinstance(value, str)
                    else f"settings.RESILIENCE[{key!r}] is {value!r}; it must be a list or tuple "
                    "of strings."
                )
        bad_paths = [p for p in user.get("RATE_LIMIT_EXEMPT_PATHS", ()) if not p.startswith("/")]
        if bad_paths:
            raise ImproperlyConfigured(
                f"settings.RESILIENCE['RATE_LIMIT_EXEMPT_PATHS'] holds {bad_paths[0]!r}, not a "
                'path prefix: exempt paths start with "/", such as "/admin/".'
            )
        return {**DEFAULTS, **user}

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"Unknown RESILIENCE setting {name!r}.")
        if self._merged is None:
            self._merged = self._load()
        return self._merged[name]

    def as_dict(self) -> dict[str, Any]:
        if self._merged is None:
            self._merged = self._load()
        return dict(self._merged)

    def reload(self) -> None:
        self._merged = None


resilience_settings = ResilienceSettings()


@receiver(setting_changed)
def _reload_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in ("RESILIENCE", "CACHES"):
        resilience_settings.reload()
