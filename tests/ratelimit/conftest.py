"""Fixtures of the rate-limit tests: settings with limiting on, and the backend under test.

``backend`` is parametrized over ``memory`` and ``redis`` so one contract suite runs against
both; Redis is the suite's own database (``TEST_REDIS_URL``), flushed around each test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from resilience.conf import resilience_settings
from resilience.ratelimit.limiter import get_rate_limiter
from resilience.registry import registry

TEST_URLCONF = "tests.ratelimit.urls"


def _forget_state() -> None:
    resilience_settings.reload()
    get_rate_limiter().reload_settings()
    registry.remove_code_rules()
    registry.mark_stale()


@pytest.fixture(autouse=True)
def _fresh_limiter(settings) -> Iterator[None]:
    """Every test starts with no code rules, a fresh backend and a stale snapshot."""
    # Admin tests log users in; the production hasher would dominate their run time.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    _forget_state()
    yield
    _forget_state()


@pytest.fixture
def limiting(settings, db) -> dict:
    """Rate limiting on, with the test views, no default limit and the default exemptions."""
    settings.ROOT_URLCONF = TEST_URLCONF
    settings.RESILIENCE = {
        **settings.RESILIENCE,
        "RATE_LIMIT_ENABLED": True,
        "RATE_LIMIT_BACKEND": "memory",
        "RATE_LIMIT_DEFAULT_CALLS": None,
        "RATE_LIMIT_FAIL_OPEN": True,
        "RATE_LIMIT_TRUSTED_PROXIES": [],
    }
    return settings.RESILIENCE


def use_settings(settings, **overrides) -> None:
    settings.RESILIENCE = {**settings.RESILIENCE, **overrides}


@pytest.fixture(params=["memory", "redis"])
def backend(request, limiting, settings) -> str:
    """The contract suite's backend: limiting on, counters in memory or in real Redis."""
    if request.param == "redis":
        request.getfixturevalue("redis_backend")
        use_settings(settings, RATE_LIMIT_BACKEND="redis")
    return request.param


def configure(**kwargs):
    return get_rate_limiter().configure_endpoint(**kwargs)
