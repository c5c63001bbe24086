"""The operators' views: the status page (in the admin) and the Prometheus metrics endpoint.

``status``
    Staff only (served through ``admin.site.admin_view`` by ``resilience.admin.status``, and
    guarded by ``staff_member_required`` wherever it is routed). GET renders breakers, the
    receipt buffer and rate-limit rules (``resilience.status``) with inline SVG charts. POST
    ``breaker=<name>`` resets that circuit for every worker; it needs the permission to change
    breaker policies, is recorded in the policy's admin history, and redirects back (so a reload
    does not reset twice). ``?refresh=<seconds>`` (5 to 300) reloads the page by itself.
``metrics``
    Prometheus text format. Not public: an active staff session, or ``Authorization: Bearer
    <RESILIENCE["METRICS_TOKEN"]>`` (compared with ``hmac.compare_digest``; never logged).
    Anything else is ``403``. Before answering, this process flushes its rate-limit tallies and
    the gauges are read from the shared state.
"""

from __future__ import annotations

import hmac
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from resilience import charts, status
from resilience import metrics as prometheus_metrics
from resilience.breaker import get_breaker
from resilience.checks import METRICS_TOKEN_MIN_LENGTH
from resilience.conf import resilience_settings
from resilience.exceptions import BackendUnavailable
from resilience.models import BreakerPolicy
from resilience.registry import flush_stats

STATE_COLOURS = {"closed": "#2e7d32", "half_open": "#ef6c00", "open": "#c62828"}
REFRESH_RANGE = (5, 300)


# The status page -----------------------------------------------------------------------------


def _minute_labels(stamps: list[Any]) -> list[str]:
    return [stamp.strftime("%H:%M UTC") for stamp in stamps]


def _refresh_seconds(request: HttpRequest) -> int | None:
    raw = request.GET.get("refresh", "")
    if not raw.isdigit():
        return None
    return min(max(int(raw), REFRESH_RANGE[0]), REFRESH_RANGE[1])


def _status_context(request: HttpRequest) -> dict[str, Any]:
    now = timezone.now()
    breakers = status.breaker_status(now)
    buffer = status.buffer_status(now)
    limits = status.ratelimit_status(now)
    buffer_labels = _minute_labels(buffer.minutes)
    limit_labels = _minute_labels(limits.minutes)
    rules = [
        {
            "rule": rule,
            "sparkline": charts.sparkline(
                rule.blocked_per_minute,
                title=_("Requests blocked per minute by %(rule)s, last hour") % {"rule": rule.name},
            ),
        }
        for rule in limits.rules
    ]
    return {
        "now": now,
        "breakers": [
            {"status": b, "colour": STATE_COLOURS.get(b.state, "inherit")} for b in breakers
        ],
        "can_reset": request.user.has_perm("resilience.change_breakerpolicy"),
        "buffer": buffer,
        "buffer_chart": charts.bar_chart(
            buffer.depth_per_minute,
            buffer_labels,
            title=_("Receipts waiting in the buffer at each minute of the last hour"),
            colour="#1565c0",
        )
        if buffer.minutes
        else "",
        "limits": limits,
        "rules": rules,
        "blocks_chart": charts.bar_chart(
            limits.blocked_per_minute,
            limit_labels,
            title=_("Requests blocked per minute, all rules, last hour"),
        ),
        "refresh": _refresh_seconds(request),
    }


@never_cache
@staff_member_required
@require_http_methods(["GET", "HEAD", "POST"])
def status_page(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _reset_breaker(request)
    context = {
        **admin.site.each_context(request),
        "title": _("Resilience status"),
        **_status_context(request),
    }
    return TemplateResponse(request, "admin/resilience/status.html", context)


def _reset_breaker(request: HttpRequest) -> HttpResponse:
    if not request.user.has_perm("resilience.change_breakerpolicy"):
        raise PermissionDenied(_("Resetting a circuit needs the permission to change breakers."))
    back = HttpResponseRedirect(reverse("admin:resilience_status"))
    name = request.POST.get("breaker", "").strip()
    known = {known_name for known_name, _enabled in status.breaker_names()}
    if name not in known:
        messages.error(
            request,
            _("No breaker named %(name)r; nothing was reset. Known: %(known)s.")
            % {"name": name, "known": ", ".join(sorted(known))},
        )
        return back
    try:
        get_breaker(name).reset()
    except BackendUnavailable as exc:
        messages.error(
            request, _("Circuit %(name)s not reset: %(error)s") % {"name": name, "error": exc}
        )
        return back
    row = BreakerPolicy.objects.filter(name=name).first()
    if row is not None:
        model_admin = admin.site.get_model_admin(BreakerPolicy)
        model_admin.log_change(request, row, "Reset the circuit from the status page.")
    messages.success(
        request,
        format_html(
            _("Circuit {} reset: closed for every worker, counts cleared."),
            name,
        ),
    )
    return back


# Metrics -------------------------------------------------------------------------------------


def _bearer_matches(request: HttpRequest) -> bool:
    expected = resilience_settings.METRICS_TOKEN
    if not isinstance(expected, str) or len(expected.strip()) < METRICS_TOKEN_MIN_LENGTH:
        return False  # unset, or refused by check resilience.E007: no token opens the endpoint
    scheme, _sep, presented = request.META.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return False
    return hmac.compare_digest(
        presented.strip().encode("utf-8", "surrogateescape"), expected.strip().encode("utf-8")
    )


def _is_staff(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not (_is_staff(request) or _bearer_matches(request)):
        return HttpResponse(
            "Forbidden: the metrics need a staff session or the metrics bearer token.\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
    flush_stats()
    prometheus_metrics.refresh_gauges()
    body, content_type = prometheus_metrics.exposition()
    return HttpResponse(body, content_type=content_type)
