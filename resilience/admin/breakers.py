"""Admin for breaker policies: live state beside the numbers, operator actions, explained limits.

The list shows each breaker's state as the fleet sees it (read from the breaker's store, so with
Redis it is the shared state), its consecutive failures, when it opened and its last error. With
Redis unreachable the store can only offer this process's own fallback view: the state then reads
"unknown", that view is named as such, and the fleet's counts show as "-". Saving a policy writes
its numbers to the running fleet on commit (``resilience.breaker.registry``) and leaves the
breaker's state as it is; when Redis is unreachable staff get a warning instead of a silent
success (the process writes the policy once Redis answers). Actions (reset, force open, force
closed, clear override) report how many breakers they changed and land in the admin history
through ``log_change``.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from resilience.breaker import Breaker, get_breaker
from resilience.breaker.registry import policy_unapplied
from resilience.breaker.stores.memory import FALLBACK_STORE
from resilience.exceptions import BackendUnavailable
from resilience.models import BreakerPolicy

# Why each number must be at least 1, said in the form instead of "greater than or equal to 1".
AT_LEAST_ONE = {
    "failure_threshold": _(
        "Use 1 or more: this is how many consecutive failures open the circuit, and below 1 it "
        "would open before anything failed."
    ),
    "timeout_seconds": _(
        "Use 1 second or more: this is how long the circuit stays open before probing, and "
        "below 1 a failing service would be probed on every call."
    ),
    "half_open_max_calls": _(
        "Use 1 or more: this is how many probes may run at once, and with none a half-open "
        "circuit could never test the service, so it would never close."
    ),
    "success_threshold": _(
        "Use 1 or more: this is how many probes in a row must succeed to close the circuit."
    ),
}

STATE_COLOURS = {"closed": "#2e7d32", "half_open": "#ef6c00", "open": "#c62828"}
UNKNOWN_COLOUR = "#757575"
STATE_LABELS = {"closed": _("closed"), "half_open": _("half-open"), "open": _("open")}
OVERRIDE_LABELS = {"force_open": _("forced open"), "force_closed": _("forced closed")}


class BreakerPolicyForm(forms.ModelForm):
    class Meta:
        model = BreakerPolicy
        fields = (
            "name",
            "enabled",
            "failure_threshold",
            "timeout_seconds",
            "half_open_max_calls",
            "success_threshold",
            "override",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in AT_LEAST_ONE:
            field = self.fields[name]
            # Our explanation replaces the generic "greater than or equal to 0" message.
            field.validators = [v for v in field.validators if not isinstance(v, MinValueValidator)]
            field.widget.attrs["min"] = 1

    def _at_least_one(self, name: str) -> int:
        value = self.cleaned_data[name]
        if value is not None and value < 1:
            raise ValidationError(AT_LEAST_ONE[name], code="min_value")
        return value

    def clean_failure_threshold(self) -> int:
        return self._at_least_one("failure_threshold")

    def clean_timeout_seconds(self) -> int:
        return self._at_least_one("timeout_seconds")

    def clean_half_open_max_calls(self) -> int:
        return self._at_least_one("half_open_max_calls")

    def clean_success_threshold(self) -> int:
        return self._at_least_one("success_threshold")


@admin.register(BreakerPolicy)
class BreakerPolicyAdmin(admin.ModelAdmin):
    form = BreakerPolicyForm
    list_display = (
        "name",
        "enabled",
        "live_state",
        "consecutive_failures",
        "opened_at",
        "last_error",
        "failure_threshold",
        "timeout_seconds",
        "half_open_max_calls",
        "success_threshold",
    )
    list_filter = ("enabled", "override")
    search_fields = ("name",)
    readonly_fields = ("live_state", "live_stats", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "enabled", "live_state")}),
        (
            _("Thresholds"),
            {
                "fields": (
                    "failure_threshold",
                    "timeout_seconds",
                    "half_open_max_calls",
                    "success_threshold",
                ),
                "description": _(
                    "Saved numbers apply to every running worker within a second; the circuit's "
                    "current state and counts are kept."
                ),
            },
        ),
        (
            _("Operator override"),
            {
                "fields": ("override",),
                "description": _(
                    "Holds for every worker until cleared. Forced open refuses every call; forced "
                    "closed lets every call through."
                ),
            },
        ),
        (_("Live counts"), {"fields": ("live_stats",), "classes": ("collapse",)}),
        (_("History"), {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
    )
    actions = ("reset_circuits", "force_open_circuits", "force_closed_circuits", "clear_overrides")

    # ------------------------------------------------------------------ saving

    def save_model(
        self, request: HttpRequest, obj: BreakerPolicy, form: forms.ModelForm, change: bool
    ) -> None:
        super().save_model(request, obj, form, change)
        name = obj.name
        # The registry pushes the row to the store on commit, from a callback registered during
        # save(); callbacks run in the order registered, so this one sees how the push went.
        transaction.on_commit(lambda: self._warn_if_unapplied(request, name), using=obj._state.db)

    def _warn_if_unapplied(self, request: HttpRequest, name: str) -> None:
        if policy_unapplied(name):
            self.message_user(
                request,
                _(
                    "The policy “%(name)s” is saved, but the running workers still use the "
                    "previous numbers: the shared store (Redis) is unreachable. This server "
                    "writes the policy there when Redis answers again."
                )
                % {"name": name},
                messages.WARNING,
            )

    # ------------------------------------------------------------------ live columns

    def _stats(self, obj: BreakerPolicy) -> dict[str, Any] | None:
        # Several columns read the same stats: fetch them once per row and request.
        if not hasattr(obj, "_live_stats"):
            try:
                obj._live_stats = get_breaker(obj.name).stats() if obj.pk else None
            except (LookupError, BackendUnavailable):
                obj._live_stats = None
        return obj._live_stats

    def _fleet_stats(self, obj: BreakerPolicy) -> dict[str, Any] | None:
        """The stats if they are the fleet's, None if only this process's fallback answered."""
        stats = self._stats(obj)
        return None if stats is None or stats.get("store") == FALLBACK_STORE else stats

    @admin.display(description=_("state"))
    def live_state(self, obj: BreakerPolicy) -> str:
        stats = self._stats(obj)
        if stats is None:
            return "-"
        state = stats["state"]
        label = str(STATE_LABELS.get(state, state))
        override = stats.get("override")
        if override:
            label = f"{OVERRIDE_LABELS.get(override, override)} ({label})"
        if not obj.enabled:
            label = f"{label}, {_('disabled')}"
        if stats.get("store") == FALLBACK_STORE:
            # Only this process's own judgement since Redis stopped answering: the fleet's
            # state is unknown here, so nothing is coloured as if it were known.
            return format_html(
                '<strong style="color: {}">{}</strong><br><small>{}: {}</small>',
                UNKNOWN_COLOUR,
                _("unknown"),
                _("Redis unreachable: this worker's own view"),
                label,
            )
        return format_html(
            '<strong style="color: {}">{}</strong>', STATE_COLOURS.get(state, "inherit"), label
        )

    @admin.display(description=_("consecutive failures"))
    def consecutive_failures(self, obj: BreakerPolicy) -> int | str:
        stats = self._fleet_stats(obj)
        return "-" if stats is None else stats["failure_count"]

    @admin.display(description=_("opened at"))
    def opened_at(self, obj: BreakerPolicy) -> Any:
        stats = self._fleet_stats(obj)
        return (stats or {}).get("opened_at") or "-"

    @admin.display(description=_("last error"))
    def last_error(self, obj: BreakerPolicy) -> str:
        stats = self._fleet_stats(obj)
        error = (stats or {}).get("last_error") or "-"
        return error if len(error) <= 80 else error[:79] + "…"

    @admin.display(description=_("live counts"))
    def live_stats(self, obj: BreakerPolicy) -> str:
        stats = self._stats(obj)
        if stats is None:
            return "-"
        rows = [
            (_("probes in flight"), stats.get("probes_in_flight")),
            (_("probe successes in a row"), stats["success_count"]),
            (_("calls"), stats["total_calls"]),
            (_("failures"), stats["total_failures"]),
            (_("successes"), stats["total_successes"]),
            (_("refused"), stats["total_rejections"]),
            (_("last failure"), stats["last_failure_time"] or "-"),
            (_("last error"), stats["last_error"] or "-"),
            (_("state store"), stats.get("store")),
        ]
        return format_html(
            "<table>{}</table>",
            format_html(
                "".join(["<tr><th>{}</th><td>{}</td></tr>"] * len(rows)),
                *[item for row in rows for item in row],
            ),
        )

    # ------------------------------------------------------------------ actions

    def _act(
        self,
        request: HttpRequest,
        queryset: QuerySet[BreakerPolicy],
        act: Any,
        history: str,
        done_message: tuple[str, str],
    ) -> None:
        done, failed = 0, []
        for policy in queryset:
            try:
                act(get_breaker(policy.name))
            except BackendUnavailable as exc:
                failed.append(f"{policy.name}: {exc}")
                continue
            done += 1
            self.log_change(request, policy, history)
        self.message_user(
            request, ngettext(done_message[0], done_message[1], done) % {"count": done}
        )
        if failed:
            self.message_user(
                request,
                _("Not changed, the shared store is unreachable: %(errors)s")
                % {"errors": "; ".join(failed)},
                messages.ERROR,
            )

    @admin.action(description=_("Reset: close the circuit and clear its counts (every worker)"))
    def reset_circuits(self, request: HttpRequest, queryset: QuerySet[BreakerPolicy]) -> None:
        self._act(
            request,
            queryset,
            Breaker.reset,
            "Reset the circuit: closed, counts cleared.",
            ("%(count)d circuit reset.", "%(count)d circuits reset."),
        )

    @admin.action(description=_("Force open: refuse every call until the override is cleared"))
    def force_open_circuits(self, request: HttpRequest, queryset: QuerySet[BreakerPolicy]) -> None:
        self._act(
            request,
            queryset,
            Breaker.force_open,
            "Forced the circuit open.",
            ("%(count)d circuit forced open.", "%(count)d circuits forced open."),
        )

    @admin.action(description=_("Force closed: let every call through until cleared"))
    def force_closed_circuits(
        self, request: HttpRequest, queryset: QuerySet[BreakerPolicy]
    ) -> None:
        self._act(
            request,
            queryset,
            Breaker.force_closed,
            "Forced the circuit closed.",
            ("%(count)d circuit forced closed.", "%(count)d circuits forced closed."),
        )

    @admin.action(description=_("Clear override: back to automatic"))
    def clear_overrides(self, request: HttpRequest, queryset: QuerySet[BreakerPolicy]) -> None:
        self._act(
            request,
            queryset,
            Breaker.clear_override,
            "Cleared the override: automatic again.",
            ("%(count)d override cleared.", "%(count)d overrides cleared."),
        )
