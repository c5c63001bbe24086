"""The status page's place in the admin: ``/admin/resilience/status/``, named
``admin:resilience_status``.

The default admin site's ``get_urls`` is wrapped once, when the admin modules are imported
(``admin.autodiscover`` at start-up), so the page needs no line in the project's URLconf and is
served through ``admin.site.admin_view``: staff only, CSRF-protected, never cached, and an
anonymous visitor is sent to the admin login. A project with its own ``AdminSite`` adds
``path("resilience/status/", site.admin_view(status_page), name="resilience_status")`` to it.
"""

from __future__ import annotations

from django.contrib import admin
from django.urls import URLPattern, URLResolver, path

from resilience.views import status_page


def _with_status_page(get_urls):
    def get_urls_with_status() -> list[URLPattern | URLResolver]:
        page = path(
            "resilience/status/",
            admin.site.admin_view(status_page),
            name="resilience_status",
        )
        return [page, *get_urls()]

    get_urls_with_status.resilience_status = True  # type: ignore[attr-defined]
    return get_urls_with_status


if not getattr(admin.site.get_urls, "resilience_status", False):
    admin.site.get_urls = _with_status_page(admin.site.get_urls)
