"""Views the rate-limit tests send requests to: sync, async, and decorated ones."""

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import path

from resilience.middleware import rate_limit


def sync_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("sync")


async def async_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("async")


@rate_limit(calls=2, window_seconds=60, name="decorated-sync")
def decorated_sync(request: HttpRequest) -> HttpResponse:
    return HttpResponse("decorated sync")


@rate_limit(calls=2, window_seconds=60, key="api_key", methods="POST", name="decorated-async")
async def decorated_async(request: HttpRequest) -> HttpResponse:
    return HttpResponse("decorated async")


urlpatterns = [
    path("admin/", admin.site.urls),
    path("v1/health", sync_view),
    path("t/sync", sync_view),
    path("t/async", async_view),
    path("t/other", sync_view),
    path("t/deep/a", sync_view),
    path("t/deep/b", sync_view),
    path("t/decorated", decorated_sync),
    path("t/adecorated", decorated_async),
]
