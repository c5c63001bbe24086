"""Site checks. asyncgate_site.E001: the development SECRET_KEY outside DEBUG."""

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, register
from django.core.exceptions import ImproperlyConfigured

SECRET_KEY_HINT = (
    "Set the SECRET_KEY environment variable (for example from "
    "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`), or DEBUG=true for "
    "development."
)


def uses_development_secret_key() -> bool:
    return not settings.DEBUG and settings.SECRET_KEY == settings.DEVELOPMENT_SECRET_KEY


@register(Tags.security)
def check_secret_key(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    if uses_development_secret_key():
        return [
            Error(
                "SECRET_KEY is the development fallback while DEBUG is off.",
                hint=SECRET_KEY_HINT,
                id="asyncgate_site.E001",
            )
        ]
    return []


def refuse_development_secret_key() -> None:
    """For the WSGI and ASGI entry points: gunicorn and uvicorn run no system checks, and the
    fallback key is public (it signs sessions and keys the rate limiter's client hashes)."""
    if uses_development_secret_key():
        raise ImproperlyConfigured(
            "SECRET_KEY is the development fallback while DEBUG is off. " + SECRET_KEY_HINT
        )
