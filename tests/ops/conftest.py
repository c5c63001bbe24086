"""Fixtures of the operators' suite: fresh breakers and tallies, a stub MemoryGate, receipts.

Prometheus counters are process-wide and never reset, so tests compare values before and after
what they do (``metric_value``) rather than absolute numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from resilience.breaker import forget_breakers
from resilience.conf import resilience_settings
from resilience.integrations import get_memorygate_client
from resilience.ratelimit import stats
from resilience.registry import registry

METRICS_TOKEN = "ops-suite-metrics-token-0123456789"


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    forget_breakers()
    stats.counts.take()
    stats.memory_buckets.clear()
    registry.mark_stale()
    yield
    forget_breakers()
    stats.counts.take()
    stats.memory_buckets.clear()
    registry.mark_stale()


def metric_value(name: str, **labels: str) -> float:
    """A sample's current value in this process's registry (0 when it was never set)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scraped_value(text: str, name: str, **labels: str) -> float | None:
    """A sample's value in Prometheus text exposition (labels compared as a set), or None."""
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return None


@pytest.fixture
def patient_redis(redis_backend: str, settings) -> str:
    """``redis_backend`` with 5 s socket timeouts instead of 0.5 s.

    These tests prove what operators see, not how the app copes with a slow Redis (other suites
    do that): on a loaded machine a 0.5 s timeout would send one call to the breaker's local
    fallback and the shared state would look wrong for reasons the test is not about.
    """
    caches = {alias: {**conf} for alias, conf in settings.CACHES.items()}
    caches["default"]["OPTIONS"] = {"SOCKET_CONNECT_TIMEOUT": 5, "SOCKET_TIMEOUT": 5}
    settings.CACHES = caches
    resilience_settings.reload()
    return redis_backend


@pytest.fixture
def emit(receipt_fields: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, str]]:
    """``emit(**overrides)``: one real ``emit_receipt_sync`` through the process's client."""

    def send(**overrides: Any) -> dict[str, str]:
        return get_memorygate_client().emit_receipt_sync(**receipt_fields(**overrides))

    return send


@pytest.fixture
def staff_user(django_user_model):
    """A staff member who may see the status page but holds no model permission."""
    return django_user_model.objects.create_user(
        username="operator", password="operator-pass-123", is_staff=True
    )


@pytest.fixture
def member_user(django_user_model):
    """A logged-in user who is not staff."""
    return django_user_model.objects.create_user(username="member", password="member-pass-123")
