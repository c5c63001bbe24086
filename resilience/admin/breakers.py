from django.contrib import admin

from resilience.models import BreakerPolicy


@admin.register(BreakerPolicy)
class BreakerPolicyAdmin(admin.ModelAdmin):
    list_display = ("name", "enabled", "failure_threshold", "timeout_seconds")
