"""Typed readers for environment variables, so one checkout runs anywhere.

Each reader returns the default when the variable is unset or empty and raises
``ImproperlyConfigured`` naming the variable when its value is malformed: a typo in production
must stop start-up, not fall back silently to a default.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _raw(name: str, environ: Mapping[str, str] | None) -> str | None:
    value = (os.environ if environ is None else environ).get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def env_str(name: str, default: str | None = None, environ: Mapping[str, str] | None = None):
    value = _raw(name, environ)
    return default if value is None else value


def env_bool(name: str, default: bool, environ: Mapping[str, str] | None = None) -> bool:
    value = _raw(name, environ)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"Environment variable {name} is {value!r}; expected one of true/false/1/0/yes/no."
    )


def env_int(
    name: str, default: int | None, environ: Mapping[str, str] | None = None, *, minimum: int = 1
) -> int | None:
    value = _raw(name, environ)
    if value is None:
        return default
    if value.lower() == "none":
        return None
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"Environment variable {name} is {value!r}; expected an integer."
        ) from None
    if number < minimum:
        raise ImproperlyConfigured(f"Environment variable {name} is {number}; minimum {minimum}.")
    return number


def env_float(name: str, default: float, environ: Mapping[str, str] | None = None) -> float:
    value = _raw(name, environ)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"Environment variable {name} is {value!r}; expected a number."
        ) from None
    if not number > 0:
        raise ImproperlyConfigured(f"Environment variable {name} must be positive, not {value}.")
    return number


def env_list(
    name: str, default: list[str] | None = None, environ: Mapping[str, str] | None = None
) -> list[str]:
    value = _raw(name, environ)
    if value is None:
        return list(default or [])
    items = [item.strip() for item in value.split(",")]
    if any(not item for item in items):
        raise ImproperlyConfigured(
            f"Environment variable {name} is {value!r}; it holds an empty item "
            "(use a comma-separated list without blanks)."
        )
    return items


def env_choice(
    name: str, default: str, choices: tuple[str, ...], environ: Mapping[str, str] | None = None
) -> str:
    value = _raw(name, environ)
    if value is None:
        return default
    if value not in choices:
        raise ImproperlyConfigured(
            f"Environment variable {name} is {value!r}; expected one of {', '.join(choices)}."
        )
    return value


def env_url(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """An http(s) base URL without a trailing slash, or None when unset."""
    value = _raw(name, environ)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ImproperlyConfigured(
            f"Environment variable {name} is {value!r}; expected an http:// or https:// URL."
        )
    return value.rstrip("/")


def env_mapping(name: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``key=value,key2=value2`` into a dict; a malformed or repeated key is an error."""
    value = _raw(name, environ)
    if value is None:
        return {}
    result: dict[str, str] = {}
    for position, item in enumerate(value.split(","), start=1):
        key, sep, mapped = item.strip().partition("=")
        if not sep or not key.strip() or not mapped.strip():
            raise ImproperlyConfigured(
                f"Environment variable {name}: item {position} is not of the form key=value."
            )
        if key.strip() in result:
            raise ImproperlyConfigured(
                f"Environment variable {name}: item {position} repeats an earlier key."
            )
        result[key.strip()] = mapped.strip()
    return result


def env_api_keys(name: str, environ: Mapping[str, str] | None = None) -> dict[str, uuid.UUID]:
    """``key=tenant-uuid,...``: API keys of the demo API and their tenants, checked at start-up.

    The error names the item's position, never the key: the variable holds secrets.
    """
    tenants = {}
    for position, (key, tenant) in enumerate(env_mapping(name, environ).items(), start=1):
        try:
            tenants[key] = uuid.UUID(tenant)
        except ValueError:
            raise ImproperlyConfigured(
                f"Environment variable {name}: item {position} maps its key to {tenant!r}, "
                "not a tenant UUID."
            ) from None
    return tenants


_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


def env_log_level(name: str, default: str, environ: Mapping[str, str] | None = None) -> str:
    value = env_str(name, default, environ).upper()
    if value not in _LOG_LEVELS:
        raise ImproperlyConfigured(
            f"Environment variable {name} is {value!r}; expected one of {', '.join(_LOG_LEVELS)}."
        )
    return value


_POSTGRES_SCHEMES = ("postgres", "postgresql", "pgsql")


def database_from_url(url: str, *, name: str = "DATABASE_URL", base_dir: Path) -> dict[str, Any]:
    """A ``DATABASES`` entry from a dj-database-url style URL (sqlite or PostgreSQL)."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # sqlite:////abs/path.db (absolute), sqlite:///rel/path.db (relative to the project),
        # sqlite://:memory: or sqlite:// (in memory).
        path = unquote(parts.path)
        if parts.netloc not in ("", ":memory:"):
            # sqlite://db.sqlite3 reads "db.sqlite3" as a host: a path with one slash too few.
            raise ImproperlyConfigured(
                f"Environment variable {name} is {url!r}: an SQLite URL has no host; use "
                "sqlite:////absolute/path.sqlite3 or sqlite:///relative/path.sqlite3."
            )
        if parts.netloc == ":memory:" or path in ("", "/", "/:memory:"):
            db_name: str | Path = ":memory:"
        elif path.startswith("//"):
            db_name = Path(path[1:])
        else:
            db_name = base_dir / path.lstrip("/")
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": db_name}
    if parts.scheme in _POSTGRES_SCHEMES:
        db = unquote(parts.path.lstrip("/"))
        if not db or "/" in db:
            raise ImproperlyConfigured(
                f"Environment variable {name} names no database (expected "
                "postgres://user@host:5432/name)."
            )
        try:
            port = parts.port
        except ValueError:
            raise ImproperlyConfigured(
                f"Environment variable {name} has an invalid port."
            ) from None
        options = dict(parse_qsl(parts.query))
        conn_max_age = options.pop("conn_max_age", "0") or "0"
        if not conn_max_age.isdigit():
            raise ImproperlyConfigured(
                f"Environment variable {name} has conn_max_age={conn_max_age!r}; expected a "
                "number of seconds."
            )
        entry: dict[str, Any] = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": db,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(port or ""),
            "CONN_MAX_AGE": int(conn_max_age),
        }
        if options:
            entry["OPTIONS"] = options
        return entry
    raise ImproperlyConfigured(
        f"Environment variable {name} has scheme {parts.scheme or '(none)'!r}; "
        "expected sqlite:// or postgres://."
    )


def redis_url(name: str = "REDIS_URL", environ: Mapping[str, str] | None = None) -> str | None:
    value = _raw(name, environ)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix") or (
        parts.scheme != "unix" and not parts.netloc
    ):
        raise ImproperlyConfigured(
            f"Environment variable {name} is not a redis:// , rediss:// or unix:// URL."
        )
    if parts.scheme != "unix":
        try:
            parts.port  # noqa: B018 (urlsplit validates the port only when it is read)
        except ValueError:
            raise ImproperlyConfigured(
                f"Environment variable {name} has an invalid port."
            ) from None
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ImproperlyConfigured(
                f"Environment variable {name} names database {db!r}; Redis databases are "
                "numbers (redis://host:6379/0)."
            )
    return value
