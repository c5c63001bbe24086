"""Validation of the small languages staff type into rules: paths, HTTP methods and client keys.

Shared by ``RateLimitRule.clean()`` and by rules declared in code (``configure_endpoint``,
``@rate_limit``) so a rule is held to the same standard wherever it comes from. Each function
raises ``ValidationError`` with a message that names what is wrong and returns the value in its
canonical form.
"""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")

# What identifies a client. "header:<Name>" takes any header name (RFC 9110 token characters).
SIMPLE_KEYS = ("ip", "user", "api_key", "user_or_ip")
_HEADER_KEY = re.compile(r"^header:([!#$%&'*+.^_`|~0-9A-Za-z-]+)$")

# A path people write: starts with "/", no whitespace, query or fragment; "*" only as a final
# "/*" (prefix rule) or alone after a trailing slash.
_PATH_CHARS = re.compile(r"^/[A-Za-z0-9._~!$&'()+,;=:@%/-]*(\*)?$")


def validate_rule_path(value: str) -> str:
    """Return ``value`` if it is an exact path (``/v1/tasks``) or a prefix (``/v1/*``)."""
    if not value:
        raise ValidationError("A path is required, such as /v1/tasks or /v1/*.", code="required")
    if not value.startswith("/"):
        raise ValidationError(
            "%(value)s is not a path: it must start with '/'.",
            code="invalid",
            params={"value": value},
        )
    if "?" in value or "#" in value:
        raise ValidationError(
            "%(value)s holds a query or fragment; rules match the path only.",
            code="invalid",
            params={"value": value},
        )
    if not _PATH_CHARS.match(value) or "//" in value:
        raise ValidationError(
            "%(value)s is not a valid path (spaces, '//' or a '*' anywhere but at the end).",
            code="invalid",
            params={"value": value},
        )
    if value.endswith("*") and not value.endswith("/*"):
        raise ValidationError(
            "A prefix rule ends in '/*', as in /v1/*; %(value)s does not.",
            code="invalid",
            params={"value": value},
        )
    return value


def validate_methods(value: str) -> str:
    """Return a comma-separated list of known HTTP methods, upper-cased; blank means all."""
    if not value or not value.strip():
        return ""
    methods = [m.strip().upper() for m in value.split(",")]
    unknown = [m for m in methods if m not in HTTP_METHODS]
    if "" in methods or unknown:
        shown = ", ".join(m or "(empty)" for m in unknown or [""])
        raise ValidationError(
            "Unknown HTTP method(s): %(unknown)s. Use a comma-separated list of %(known)s, "
            "or leave blank for all.",
            code="invalid",
            params={"unknown": shown, "known": ", ".join(HTTP_METHODS)},
        )
    return ",".join(dict.fromkeys(methods))


def validate_client_key(value: str) -> str:
    """Return ``value`` if it names a known way of identifying a client."""
    if value in SIMPLE_KEYS or _HEADER_KEY.match(value or ""):
        return value
    raise ValidationError(
        "Unknown key %(value)s. Use one of %(known)s, or header:<Header-Name>.",
        code="invalid",
        params={"value": value, "known": ", ".join(SIMPLE_KEYS)},
    )
