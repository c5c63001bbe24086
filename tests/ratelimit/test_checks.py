"""resilience.W003: the middleware before AuthenticationMiddleware while rules key on users."""

from __future__ import annotations

from model_bakery import baker

from resilience.checks import (
    check_middleware_order_for_code_rules,
    check_middleware_order_for_db_rules,
)
from resilience.models import RateLimitRule
from tests.ratelimit.conftest import configure

AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
OURS = "resilience.middleware.RateLimitMiddleware"


def test_checks__w003_for_a_code_rule_keyed_on_users(settings, limiting):
    settings.MIDDLEWARE = [OURS, AUTH]
    assert check_middleware_order_for_code_rules() == []
    configure(path="/v1/tasks", calls=5, window_seconds=60, key="user", name="per-user")
    (warning,) = check_middleware_order_for_code_rules()
    assert warning.id == "resilience.W003" and "per-user" in warning.msg
    settings.MIDDLEWARE = [AUTH, OURS]
    assert check_middleware_order_for_code_rules() == []


def test_checks__w003_for_a_database_rule_keyed_on_users(settings, db):
    settings.MIDDLEWARE = [OURS]
    baker.make(RateLimitRule, name="by-ip", path="/v1/a", calls=5, window_seconds=60, key="ip")
    assert check_middleware_order_for_db_rules(databases=["default"]) == []
    baker.make(RateLimitRule, name="by-user", path="/v1/b", calls=5, window_seconds=60, key="user")
    (warning,) = check_middleware_order_for_db_rules(databases=["default"])
    assert warning.id == "resilience.W003" and "by-user" in warning.msg
    assert check_middleware_order_for_db_rules(databases=None) == []  # not a database check run
