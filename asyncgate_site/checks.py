"""Site checks. asyncgate_site.E001: the development SECRET_KEY outside DEBUG."""

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security)
def check_secret_key(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    if not settings.DEBUG and settings.SECRET_KEY == settings.DEVELOPMENT_SECRET_KEY:
        return [
            Error(
                "SECRET_KEY is the development fallback while DEBUG is off.",
                hint="Set the SECRET_KEY environment variable (for example from "
                "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`), "
                "or DEBUG=true for development.",
                id="asyncgate_site.E001",
            )
        ]
    return []
