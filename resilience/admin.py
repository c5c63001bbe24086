from django.contrib import admin

from resilience.models import BreakerPolicy, BufferedReceipt, RateLimitRule


@admin.register(RateLimitRule)
class RateLimitRuleAdmin(admin.ModelAdmin):
    list_display = ("name", "path", "methods", "calls", "window_seconds", "key", "mode")
    search_fields = ("name", "path")


@admin.register(BreakerPolicy)
class BreakerPolicyAdmin(admin.ModelAdmin):
    list_display = ("name", "enabled", "failure_threshold", "timeout_seconds")


@admin.register(BufferedReceipt)
class BufferedReceiptAdmin(admin.ModelAdmin):
    list_display = ("receipt_id", "receipt_type", "status", "attempts", "next_attempt_at")
    list_filter = ("status",)

    def has_add_permission(self, request) -> bool:
        return False
