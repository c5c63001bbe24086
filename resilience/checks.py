"""System checks: every misconfiguration detectable at start-up, each with a stable id and a hint.

=================  ===========================================================================
id                 meaning
=================  ===========================================================================
resilience.E001    ``settings.RESILIENCE`` is not a dict, holds an unknown key, or a list setting
                   (``RATE_LIMIT_EXEMPT_PATHS``, ``RATE_LIMIT_TRUSTED_PROXIES``) is not a list
                   of strings (a bare string would be read character by character)
resilience.E002    ``RATE_LIMIT_BACKEND`` is neither ``"memory"`` nor ``"redis"``
resilience.E003    the redis backend names a cache alias that is missing or not django-redis
resilience.E004    a numeric setting is out of range or of the wrong type
resilience.E005    ``RATE_LIMIT_TRUSTED_PROXIES`` holds something that is not a CIDR
resilience.E006    ``MEMORYGATE_URL`` is not an http(s) URL
resilience.W001    rate limiting is enabled but ``RateLimitMiddleware`` is not installed
resilience.W002    ``MEMORYGATE_URL`` is unset: every receipt is buffered, none delivered
resilience.W003    ``RateLimitMiddleware`` runs before ``AuthenticationMiddleware`` (or without
                   it) while a rule keys on ``user``/``user_or_ip``: those rules see no user
                   and count every request by IP. Code rules are checked always; database
                   rules only by database checks (``check --database default``, ``migrate``)
resilience.W004    ``MEMORYGATE_TIMEOUT_SECONDS`` is not below the breaker's probe lease, so a
                   slow probe could lose its half-open slot while still running
resilience.E007    ``METRICS_TOKEN`` is neither None nor a string of at least 16 characters
=================  ===========================================================================
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured

from resilience.conf import resilience_settings

MIDDLEWARE_PATH = "resilience.middleware.RateLimitMiddleware"
DJANGO_REDIS_BACKENDS = ("django_redis.cache.RedisCache",)


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list:
    try:
        conf = resilience_settings.as_dict()
    except ImproperlyConfigured as exc:
        return [Error(str(exc), hint="Fix settings.RESILIENCE.", id="resilience.E001")]

    errors: list = []
    backend = conf["RATE_LIMIT_BACKEND"]
    if backend not in ("memory", "redis"):
        errors.append(
            Error(
                f"RESILIENCE['RATE_LIMIT_BACKEND'] is {backend!r}.",
                hint='Use "memory" (one process) or "redis" (shared by the fleet).',
                id="resilience.E002",
            )
        )
    elif backend == "redis":
        alias = conf["RATE_LIMIT_CACHE_ALIAS"]
        cache_conf = settings.CACHES.get(alias)
        if cache_conf is None or cache_conf.get("BACKEND") not in DJANGO_REDIS_BACKENDS:
            errors.append(
                Error(
                    f"The redis rate-limit backend needs CACHES[{alias!r}] to be a django-redis "
                    f"cache; it is {cache_conf.get('BACKEND') if cache_conf else 'missing'}.",
                    hint="Set REDIS_URL, or point RATE_LIMIT_CACHE_ALIAS at a "
                    "django_redis.cache.RedisCache alias.",
                    id="resilience.E003",
                )
            )

    errors.extend(_check_numbers(conf))
    for proxy in conf["RATE_LIMIT_TRUSTED_PROXIES"]:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except (TypeError, ValueError):
            errors.append(
                Error(
                    f"RESILIENCE['RATE_LIMIT_TRUSTED_PROXIES'] holds {proxy!r}, not a CIDR.",
                    hint="Use networks such as 10.0.0.0/8 or 127.0.0.1/32.",
                    id="resilience.E005",
                )
            )

    url = conf["MEMORYGATE_URL"]
    if url is None:
        errors.append(
            Warning(
                "RESILIENCE['MEMORYGATE_URL'] is unset: every receipt is buffered in the database "
                "and none is delivered.",
                hint="Set MEMORYGATE_URL to MemoryGate's base URL.",
                id="resilience.W002",
            )
        )
    elif (
        not isinstance(url, str)
        or urlsplit(url).scheme not in ("http", "https")
        or not urlsplit(url).netloc
    ):
        errors.append(
            Error(
                f"RESILIENCE['MEMORYGATE_URL'] is {url!r}, not an http(s) URL.",
                hint="Use a base URL such as https://memorygate.internal:8443.",
                id="resilience.E006",
            )
        )

    if conf["RATE_LIMIT_ENABLED"] and MIDDLEWARE_PATH not in settings.MIDDLEWARE:
        errors.append(
            Warning(
                "Rate limiting is enabled but RateLimitMiddleware is not in MIDDLEWARE, so no "
                "rule is enforced.",
                hint=f'Add "{MIDDLEWARE_PATH}" to MIDDLEWARE after AuthenticationMiddleware.',
                id="resilience.W001",
            )
        )
    return errors


_POSITIVE_INTS = (
    "RATE_LIMIT_DEFAULT_WINDOW_SECONDS",
    "MEMORYGATE_CIRCUIT_BREAKER_FAILURE_THRESHOLD",
    "MEMORYGATE_CIRCUIT_BREAKER_TIMEOUT_SECONDS",
    "MEMORYGATE_CIRCUIT_BREAKER_HALF_OPEN_MAX_CALLS",
    "MEMORYGATE_CIRCUIT_BREAKER_SUCCESS_THRESHOLD",
)


def _check_numbers(conf: dict[str, Any]) -> list:
    def positive_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    errors = []
    for key in _POSITIVE_INTS:
        if not positive_int(conf[key]):
            errors.append(_number_error(key, conf[key], "a positive integer"))
    calls = conf["RATE_LIMIT_DEFAULT_CALLS"]
    if calls is not None and not positive_int(calls):
        errors.append(
            _number_error("RATE_LIMIT_DEFAULT_CALLS", calls, "a positive integer or None")
        )
    timeout = conf["MEMORYGATE_TIMEOUT_SECONDS"]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        errors.append(_number_error("MEMORYGATE_TIMEOUT_SECONDS", timeout, "a positive number"))
    return errors


def _number_error(key: str, value: Any, expected: str) -> Error:
    return Error(
        f"RESILIENCE[{key!r}] is {value!r}; it must be {expected}.",
        hint="See the settings table in the README for defaults and units.",
        id="resilience.E004",
    )


AUTH_MIDDLEWARE_PATH = "django.contrib.auth.middleware.AuthenticationMiddleware"


def _middleware_before_auth() -> bool:
    """True when RateLimitMiddleware is installed and runs before (or without) authentication.

    Placement alone is not an error: it only matters to rules keyed on the user, so W003 fires
    only when such a rule exists.
    """
    middleware = list(settings.MIDDLEWARE)
    if MIDDLEWARE_PATH not in middleware:
        return False
    if AUTH_MIDDLEWARE_PATH not in middleware:
        return True
    return middleware.index(MIDDLEWARE_PATH) < middleware.index(AUTH_MIDDLEWARE_PATH)


def _user_keyed_warning(where: str, names: list[str]) -> Warning:
    return Warning(
        f"RateLimitMiddleware runs before AuthenticationMiddleware, but {where} rule(s) "
        f"{', '.join(sorted(names)[:5])} key on the user: they will count every request by IP.",
        hint=f'Place "{MIDDLEWARE_PATH}" after "{AUTH_MIDDLEWARE_PATH}" in MIDDLEWARE.',
        id="resilience.W003",
    )


@register(Tags.compatibility)
def check_middleware_order_for_code_rules(app_configs: Any = None, **kwargs: Any) -> list:
    if not _middleware_before_auth():
        return []
    from resilience.ratelimit.rules import USER_KEYS
    from resilience.registry import registry

    names = [rule.name for rule in registry.code_rules if rule.key in USER_KEYS]
    return [_user_keyed_warning("code", names)] if names else []


@register(Tags.database)
def check_middleware_order_for_db_rules(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list:
    if not databases or not _middleware_before_auth():
        return []
    from django.db import DatabaseError

    from resilience.models import RateLimitRule
    from resilience.ratelimit.rules import USER_KEYS

    try:
        names = list(
            RateLimitRule.objects.filter(key__in=USER_KEYS)
            .exclude(mode="off")
            .values_list("name", flat=True)[:5]
        )
    except DatabaseError:
        return []  # the table does not exist yet (before migrate): nothing to warn about
    return [_user_keyed_warning("database", names)] if names else []


@register(Tags.compatibility)
def check_breaker_probe_lease(app_configs: Any = None, **kwargs: Any) -> list:
    """A probe must end before its lease does, or more probes than allowed run at once."""
    from resilience.breaker.machine import DEFAULT_PROBE_LEASE_SECONDS

    try:
        timeout = resilience_settings.MEMORYGATE_TIMEOUT_SECONDS
    except ImproperlyConfigured:
        return []  # reported as resilience.E001
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        return []  # reported as resilience.E004
    if timeout < DEFAULT_PROBE_LEASE_SECONDS:
        return []
    return [
        Warning(
            f"RESILIENCE['MEMORYGATE_TIMEOUT_SECONDS'] is {timeout} s, not below the circuit "
            f"breaker's probe lease ({DEFAULT_PROBE_LEASE_SECONDS} s): a slow half-open probe "
            "could lose its slot while still running, letting extra probes through.",
            hint=f"Use a MemoryGate timeout well below {DEFAULT_PROBE_LEASE_SECONDS} s.",
            id="resilience.W004",
        )
    ]


METRICS_TOKEN_MIN_LENGTH = 16


@register(Tags.security)
def check_metrics_token(app_configs: Any = None, **kwargs: Any) -> list:
    """A short token can be guessed; the value itself never appears in the message."""
    try:
        token = resilience_settings.METRICS_TOKEN
    except ImproperlyConfigured:
        return []  # reported as resilience.E001
    if token is None:
        return []
    if isinstance(token, str) and len(token.strip()) >= METRICS_TOKEN_MIN_LENGTH:
        return []
    shape = (
        f"a string of {len(token.strip())} characters"
        if isinstance(token, str)
        else f"a {type(token).__name__}"
    )
    return [
        Error(
            f"RESILIENCE['METRICS_TOKEN'] is {shape}.",
            hint=f"Use None (staff sessions only) or a random string of at least "
            f"{METRICS_TOKEN_MIN_LENGTH} characters, e.g. from "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`.",
            id="resilience.E007",
        )
    ]
