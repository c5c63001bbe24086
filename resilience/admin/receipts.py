"""Buffered receipts: what MemoryGate has not stored yet, for staff to watch, retry or discard.

No add permission (rows come from ``emit_receipt`` only) and every field read-only: the payload is
the exact wire body and its ``receipt_id`` the idempotency key, so editing either would break
the at-least-once contract. Actions report how many rows they touched and are logged in each
row's admin history; retry now and requeue dead need the change permission, discard the delete
permission, so view-only staff can watch the buffer and nothing more. The API key is never part
of a row, so it cannot show here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.timesince import timeuntil
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from resilience.models import BufferedReceipt, ReceiptStatus
from resilience.receipts import buffer

LAST_ERROR_COLUMN_CHARS = 80


@admin.register(BufferedReceipt)
class BufferedReceiptAdmin(admin.ModelAdmin):
    list_display = (
        "receipt_id",
        "receipt_type",
        "tenant_id",
        "status",
        "attempts",
        "next_retry_in",
        "short_last_error",
        "created_at",
    )
    list_filter = ("status", "receipt_type", "tenant_id")
    search_fields = ("=receipt_id", "=tenant_id", "=task_id")
    ordering = ("next_attempt_at", "id")
    date_hierarchy = "created_at"
    list_per_page = 100
    actions = ("retry_now", "requeue_dead", "discard")
    fieldsets = (
        (None, {"fields": ("receipt_id", "receipt_type", "tenant_id", "task_id", "lease_id")}),
        (
            _("Delivery"),
            {
                "fields": (
                    "status",
                    "attempts",
                    "next_attempt_at",
                    "next_retry_in",
                    "last_error",
                    "created_at",
                    "delivered_at",
                )
            },
        ),
        (_("Wire body"), {"fields": ("pretty_payload",)}),
        (
            _("Lease"),
            {"classes": ("collapse",), "fields": ("lease_token", "lease_expires_at", "updated_at")},
        ),
    )
    readonly_fields = (
        "receipt_id",
        "receipt_type",
        "tenant_id",
        "task_id",
        "lease_id",
        "status",
        "attempts",
        "next_attempt_at",
        "next_retry_in",
        "last_error",
        "created_at",
        "delivered_at",
        "pretty_payload",
        "lease_token",
        "lease_expires_at",
        "updated_at",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    # Columns

    @admin.display(description=_("next retry in"), ordering="next_attempt_at")
    def next_retry_in(self, obj: BufferedReceipt) -> str:
        if obj.status != ReceiptStatus.PENDING:
            return "—"
        now = timezone.now()
        if obj.next_attempt_at <= now:
            return _("due")
        return _("in %(time)s") % {"time": timeuntil(obj.next_attempt_at, now, depth=1)}

    @admin.display(description=_("last error"))
    def short_last_error(self, obj: BufferedReceipt) -> str:
        error = obj.last_error
        if len(error) <= LAST_ERROR_COLUMN_CHARS:
            return error
        return error[: LAST_ERROR_COLUMN_CHARS - 1] + "…"

    @admin.display(description=_("payload"))
    def pretty_payload(self, obj: BufferedReceipt) -> str:
        text = json.dumps(obj.payload, indent=2, sort_keys=True, ensure_ascii=False)
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', text)

    # Actions

    @admin.action(description=_("Retry now (pending or dead: due now)"), permissions=("change",))
    def retry_now(self, request: HttpRequest, queryset: QuerySet[BufferedReceipt]) -> None:
        eligible = queryset.filter(status__in=(ReceiptStatus.PENDING, ReceiptStatus.DEAD))
        self._bulk(request, eligible, buffer.retry_now, "Marked for retry now.", "retried now")

    @admin.action(description=_("Requeue dead receipts (fresh attempts)"), permissions=("change",))
    def requeue_dead(self, request: HttpRequest, queryset: QuerySet[BufferedReceipt]) -> None:
        dead = queryset.filter(status=ReceiptStatus.DEAD)
        self._bulk(request, dead, buffer.requeue_dead, "Requeued from dead.", "requeued")

    @admin.action(description=_("Discard (delete) selected receipts"), permissions=("delete",))
    def discard(self, request: HttpRequest, queryset: QuerySet[BufferedReceipt]) -> None:
        rows = list(queryset.values_list("pk", "receipt_id"))
        with transaction.atomic():
            self._log(request, rows, DELETION, "Discarded from the receipt buffer.")
            deleted, _ = BufferedReceipt.objects.filter(pk__in=[pk for pk, _ in rows]).delete()
        self._report(request, deleted, "discarded")

    def _bulk(
        self,
        request: HttpRequest,
        queryset: QuerySet[BufferedReceipt],
        change: Callable[[QuerySet[BufferedReceipt]], int],
        message: str,
        verb: str,
    ) -> None:
        with transaction.atomic():
            rows = list(queryset.values_list("pk", "receipt_id"))
            count = change(BufferedReceipt.objects.filter(pk__in=[pk for pk, _ in rows]))
            self._log(request, rows, CHANGE, message)
        self._report(request, count, verb)

    def _log(
        self, request: HttpRequest, rows: list[tuple[Any, Any]], action_flag: int, message: str
    ) -> None:
        if not rows:
            return
        content_type = ContentType.objects.get_for_model(BufferedReceipt)
        LogEntry.objects.bulk_create(
            [
                LogEntry(
                    user_id=request.user.pk,
                    content_type=content_type,
                    object_id=str(pk),
                    object_repr=str(receipt_id)[:200],
                    action_flag=action_flag,
                    change_message=message,
                )
                for pk, receipt_id in rows
            ]
        )

    def _report(self, request: HttpRequest, count: int, verb: str) -> None:
        text = ngettext("%(count)d receipt %(verb)s.", "%(count)d receipts %(verb)s.", count) % {
            "count": count,
            "verb": verb,
        }
        self.message_user(request, text, messages.SUCCESS if count else messages.WARNING)
