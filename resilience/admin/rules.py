from django.contrib import admin

from resilience.models import RateLimitRule


@admin.register(RateLimitRule)
class RateLimitRuleAdmin(admin.ModelAdmin):
    list_display = ("name", "path", "methods", "calls", "window_seconds", "key", "mode")
    search_fields = ("name", "path")
