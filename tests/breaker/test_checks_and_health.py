"""The breaker at the Django edge: its system check and its line in the health view."""

from __future__ import annotations

from resilience.breaker import get_breaker
from resilience.checks import check_breaker_probe_lease


def test_check__memorygate_timeout_beyond_the_probe_lease_warns(settings):
    settings.RESILIENCE = {**settings.RESILIENCE, "MEMORYGATE_TIMEOUT_SECONDS": 30}
    [warning] = check_breaker_probe_lease()
    assert warning.id == "resilience.W004"
    assert "30 s" in warning.msg


def test_check__default_timeout_is_fine(settings):
    settings.RESILIENCE = {**settings.RESILIENCE, "MEMORYGATE_TIMEOUT_SECONDS": 0.5}
    assert check_breaker_probe_lease() == []


def test_health__reports_the_memorygate_breaker_state(client, db):
    breaker = get_breaker("memorygate")
    for _ in range(breaker.policy.failure_threshold):
        breaker.acquire().failure("down")
    response = client.get("/v1/health")
    assert response.status_code == 200  # an open breaker buffers receipts; the site is up
    body = response.json()["memorygate_breaker"]
    assert body["state"] == "open"
    assert body["failure_count"] == breaker.policy.failure_threshold
    assert body["opened_at"] is not None
