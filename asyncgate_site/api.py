"""The minimal AsyncGate API the limits protect: a health probe and task creation.

Clients authenticate with an API key (``Authorization: Bearer <key>`` or ``X-API-Key``) that
``settings.ASYNCGATE_API_KEYS`` maps to a tenant. Keys are compared by their SHA-256 digest so the
lookup neither keeps nor compares raw secrets byte by byte.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from functools import cache
from typing import Any

from django.conf import settings
from django.core.cache import cache as default_cache
from django.core.signals import setting_changed
from django.db import connection
from django.dispatch import receiver
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from resilience.integrations import get_memorygate_client
from resilience.ratelimit.keys import presented_api_key

TASK_TYPE = re.compile(r"^[a-z][a-z0-9_.-]{0,99}$")
TASK_FIELDS = {"task_type", "payload"}
MAX_BODY_BYTES = 64 * 1024
# Who a new task is assigned to in its task.assigned receipt: the queue, until a worker leases it.
TASK_QUEUE_PRINCIPAL = {"kind": "system", "id": "asyncgate.queue"}


def _error(status: int, message: str, field: str | None = None) -> JsonResponse:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return JsonResponse(body, status=status)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@cache
def _tenants_by_key_digest() -> dict[str, uuid.UUID]:
    tenants = {}
    for key, tenant in settings.ASYNCGATE_API_KEYS.items():
        tenants[_digest(key)] = uuid.UUID(str(tenant))  # a UUID already, from settings
    return tenants


@receiver(setting_changed)
def _forget_keys(*, setting: str, **kwargs: Any) -> None:
    if setting == "ASYNCGATE_API_KEYS":
        _tenants_by_key_digest.cache_clear()


def authenticate_tenant(request: HttpRequest) -> uuid.UUID | None:
    # The same reading of the headers as the rate limiter's api_key identity, so the key a
    # client is limited by is the key it is authenticated by.
    key = presented_api_key(request)
    if key is None:
        return None
    return _tenants_by_key_digest().get(_digest(key))


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    checks = {"database": _database_ok(), "cache": _cache_ok()}
    healthy = all(checks.values())
    # Informational: an open breaker means receipts are buffered, not that this site is down.
    return JsonResponse(
        {
            "status": "ok" if healthy else "degraded",
            **checks,
            "memorygate_breaker": _memorygate_breaker(),
        },
        status=200 if healthy else 503,
    )


def _memorygate_breaker() -> dict[str, Any]:
    from resilience.breaker import get_breaker

    try:
        stats = get_breaker("memorygate").stats()
    except Exception:
        return {"state": "unknown"}
    return {
        "state": stats["state"],
        "override": stats["override"],
        "failure_count": stats["failure_count"],
        "opened_at": stats["opened_at"],
    }


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:
        return False


def _cache_ok() -> bool:
    try:
        default_cache.set("asyncgate:health", "1", timeout=5)
        return default_cache.get("asyncgate:health") == "1"
    except Exception:
        return False


@csrf_exempt
@require_POST
async def create_task(request: HttpRequest) -> JsonResponse:
    """Accept a task and emit its ``task.assigned`` receipt.

    The receipt goes from the tenant's service principal (``service``, the tenant's UUID) to the
    AsyncGate queue (``system``, ``asyncgate.queue``), which now holds the task until a worker
    leases it. Its body names the task type and the request's size, not the payload itself (a
    task payload may be larger than a receipt body may be). The response says whether MemoryGate
    stored the receipt now (``delivered``) or it waits in the buffer (``buffered``); the task is
    accepted either way. Async so that, under ASGI, every request shares one connection pool.
    """
    tenant_id = authenticate_tenant(request)
    if tenant_id is None:
        return _error(401, "A valid API key is required (Authorization: Bearer or X-API-Key).")
    result = parse_task(request.body)
    if isinstance(result, JsonResponse):
        return result
    task_id = uuid.uuid4()
    receipt = await get_memorygate_client().emit_receipt(
        tenant_id=tenant_id,
        receipt_type="task.assigned",
        from_principal={"kind": "service", "id": str(tenant_id)},
        to_principal=TASK_QUEUE_PRINCIPAL,
        task_id=task_id,
        body={"task_type": result["task_type"], "request_bytes": len(request.body)},
    )
    return JsonResponse(
        {
            "task_id": str(task_id),
            "tenant_id": str(tenant_id),
            "status": "accepted",
            "receipt": {"status": receipt["status"], "receipt_id": receipt["receipt_id"]},
        },
        status=202,
    )


def parse_task(raw: bytes) -> dict[str, Any] | JsonResponse:
    """The validated task, or a 400 response naming what is wrong."""
    if len(raw) > MAX_BODY_BYTES:
        return _error(400, f"The body is larger than {MAX_BODY_BYTES} bytes.")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _error(400, f"The body is not valid JSON: {exc}.")
    if not isinstance(data, dict):
        return _error(400, "The body must be a JSON object.")
    unknown = sorted(set(data) - TASK_FIELDS)
    if unknown:
        return _error(400, f"Unknown field: {unknown[0]}.", field=unknown[0])
    task_type = data.get("task_type")
    if not isinstance(task_type, str) or not TASK_TYPE.match(task_type):
        return _error(
            400,
            "task_type is required: lower-case letters, digits, '.', '_' or '-', at most 100.",
            field="task_type",
        )
    payload = data.get("payload", {})
    if not isinstance(payload, dict):
        return _error(400, "payload must be a JSON object.", field="payload")
    return {"task_type": task_type, "payload": payload}
