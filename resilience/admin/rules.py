"""Admin for rate-limit rules: list, edit in the list, filter, search, and act on many at once.

Validation lives in ``RateLimitRule.clean()`` and the field validators, so the change form and the
list's inline edits refuse the same things with the same messages. Every change lands in the admin
history: forms and list edits through Django's own logging, actions through ``log_change``.

Saves, deletes and the mode actions' ``QuerySet.update`` reach every worker through the
registry's receivers (``post_save``, ``post_delete``, and ``policy_rows_changed`` for bulk writes).
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from resilience.exceptions import BackendUnavailable
from resilience.models import Mode, RateLimitRule
from resilience.ratelimit.limiter import get_rate_limiter
from resilience.registry import rule_from_row


class RuleChangeListForm(forms.ModelForm):
    """The list's inline form. ``clean()`` may blame ``notes`` (a long window needs a reason),
    which the list does not show: that error is moved onto the window column instead of being
    lost (Django would raise for an error on a field the form does not have)."""

    def add_error(self, field: str | None, error: ValidationError | str) -> None:
        if field is None and isinstance(error, ValidationError) and hasattr(error, "error_dict"):
            moved: dict[str, list] = {}
            for name, field_errors in error.error_dict.items():
                errors = field_errors
                if name in self.fields or name == NON_FIELD_ERRORS:
                    target = name
                elif name == "notes" and "window_seconds" in self.fields:
                    target = "window_seconds"
                    errors = [
                        ValidationError(
                            _("%(error)s Open the rule to add a note."),
                            params={"error": " ".join(ValidationError(field_errors).messages)},
                            code="long_window",
                        )
                    ]
                else:
                    target = NON_FIELD_ERRORS
                moved.setdefault(target, []).extend(errors)
            error = ValidationError(moved)
        super().add_error(field, error)


@admin.register(RateLimitRule)
class RateLimitRuleAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "path",
        "methods_display",
        "rate",
        "calls",
        "window_seconds",
        "algorithm",
        "key",
        "mode",
    )
    list_display_links = ("name",)
    list_editable = ("calls", "window_seconds", "mode")
    list_filter = ("mode", "algorithm", "key")
    search_fields = ("name", "path", "key_prefix", "notes")
    readonly_fields = ("created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "path", "methods", "calls", "window_seconds", "key", "mode")}),
        (
            _("Advanced"),
            {
                "classes": ("collapse",),
                "fields": ("algorithm", "key_prefix", "notes", "created_at", "updated_at"),
            },
        ),
    )
    actions = ("enforce_rules", "shadow_rules", "switch_off_rules", "reset_counters")

    def formfield_for_dbfield(self, db_field, request: HttpRequest, **kwargs):
        # PositiveIntegerField's form field accepts 0 and answers -5 with "greater than or equal
        # to 0", which misleads: the model refuses anything below 1.
        if db_field.name in ("calls", "window_seconds"):
            kwargs.setdefault("min_value", 1)
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    @admin.display(description=_("methods"), ordering="methods")
    def methods_display(self, rule: RateLimitRule) -> str:
        return rule.methods or _("all")

    @admin.display(description=_("rate"))
    def rate(self, rule: RateLimitRule) -> str:
        return rule.rate_display

    def get_changelist_form(self, request: HttpRequest, **kwargs):
        kwargs.setdefault("form", RuleChangeListForm)
        return super().get_changelist_form(request, **kwargs)

    # Actions --------------------------------------------------------------------------------

    def _set_mode(self, request: HttpRequest, queryset: QuerySet, mode: str) -> None:
        changing = list(queryset.exclude(mode=mode))
        if changing:
            RateLimitRule.objects.filter(pk__in=[rule.pk for rule in changing]).update(
                mode=mode, updated_at=timezone.now()
            )
            for rule in changing:
                self.log_change(request, rule, [{"changed": {"fields": ["Mode"]}}])
        label = Mode(mode).label
        self.message_user(
            request,
            ngettext(
                "%(count)d rule set to %(mode)s.", "%(count)d rules set to %(mode)s.", len(changing)
            )
            % {"count": len(changing), "mode": label},
            messages.SUCCESS,
        )

    @admin.action(description=_("Enforce selected rules"), permissions=["change"])
    def enforce_rules(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_mode(request, queryset, Mode.ENFORCE)

    @admin.action(
        description=_("Shadow selected rules (count and log, never block)"), permissions=["change"]
    )
    def shadow_rules(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_mode(request, queryset, Mode.SHADOW)

    @admin.action(description=_("Switch off selected rules"), permissions=["change"])
    def switch_off_rules(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_mode(request, queryset, Mode.OFF)

    @admin.action(description=_("Reset counters of selected rules"), permissions=["change"])
    def reset_counters(self, request: HttpRequest, queryset: QuerySet) -> None:
        rows = list(queryset)
        try:
            removed = get_rate_limiter().reset([rule_from_row(row) for row in rows])
        except BackendUnavailable as exc:
            self.message_user(request, _("Counters not reset: %s") % exc, messages.ERROR)
            return
        for row in rows:
            self.log_change(request, row, _("Reset counters."))
        self.message_user(
            request,
            ngettext(
                "Counters of %(count)d rule reset (%(keys)d keys removed).",
                "Counters of %(count)d rules reset (%(keys)d keys removed).",
                len(rows),
            )
            % {"count": len(rows), "keys": removed},
            messages.SUCCESS,
        )
