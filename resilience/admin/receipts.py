from django.contrib import admin

from resilience.models import BufferedReceipt


@admin.register(BufferedReceipt)
class BufferedReceiptAdmin(admin.ModelAdmin):
    list_display = ("receipt_id", "receipt_type", "status", "attempts", "next_attempt_at")
    list_filter = ("status",)

    def has_add_permission(self, request) -> bool:
        return False
