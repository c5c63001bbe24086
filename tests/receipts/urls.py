"""A sync view that emits with ``emit_receipt_sync``, for the WSGI test, beside the site's URLs."""

import json

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from asyncgate_site.urls import urlpatterns as site_urlpatterns
from resilience.integrations import get_memorygate_client
from tests.receipts.conftest import TENANT


@csrf_exempt
def emit_sync(request: HttpRequest) -> JsonResponse:
    result = get_memorygate_client().emit_receipt_sync(
        tenant_id=TENANT,
        receipt_type="task.started",
        from_principal={"kind": "worker", "id": "w-7"},
        to_principal={"kind": "service", "id": "asyncgate"},
        body=json.loads(request.body),
    )
    return JsonResponse(result)


urlpatterns = [*site_urlpatterns, path("test/emit-sync", emit_sync)]
