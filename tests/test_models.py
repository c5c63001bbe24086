import pytest
from django.core.exceptions import ValidationError

from resilience.models import BreakerPolicy, RateLimitRule


def rule(**overrides) -> RateLimitRule:
    values = {"name": "tasks", "path": "/v1/tasks", "calls": 50, "window_seconds": 60, "key": "ip"}
    return RateLimitRule(**{**values, **overrides})


def errors_of(instance) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as excinfo:
        instance.full_clean()
    return excinfo.value.message_dict


@pytest.mark.django_db
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"path": "/v1/*", "methods": "post, get"},
        {"key": "header:X-Tenant-Id"},
        {"key": "api_key", "window_seconds": 7 * 86_400, "notes": "Weekly quota agreed with ops."},
    ],
)
def test_rate_limit_rule__valid_rules_pass(overrides):
    instance = rule(**overrides)
    instance.full_clean()
    if "methods" in overrides:
        assert instance.methods == "POST,GET"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"calls": 0}, "calls", "greater than or equal to 1"),
        ({"window_seconds": 0}, "window_seconds", "greater than or equal to 1"),
        ({"path": "v1/tasks"}, "path", "must start with '/'"),
        ({"path": "/v1/tasks?x=1"}, "path", "query or fragment"),
        ({"path": "/v1/ta sks"}, "path", "not a valid path"),
        ({"path": "/v1*"}, "path", "ends in '/*'"),
        ({"key": "cookie"}, "key", "Unknown key cookie"),
        ({"key": "header:"}, "key", "Unknown key"),
        ({"methods": "POST,FETCH"}, "methods", "Unknown HTTP method(s): FETCH"),
        ({"window_seconds": 2 * 86_400}, "notes", "over a day"),
    ],
)
def test_rate_limit_rule__invalid_values_name_the_field(overrides, field, fragment):
    messages = errors_of(rule(**overrides))
    assert field in messages
    assert any(fragment in message for message in messages[field]), messages


def test_rate_limit_rule__reads_its_rate_like_people_do():
    assert rule().rate_display == "50 per 60 s"
    assert rule(path="/v1/*").is_prefix and not rule().is_prefix


@pytest.mark.django_db
@pytest.mark.parametrize(
    "field", ["failure_threshold", "timeout_seconds", "half_open_max_calls", "success_threshold"]
)
def test_breaker_policy__numbers_below_one_are_refused(field):
    policy = BreakerPolicy(name="search", **{field: 0})
    assert field in errors_of(policy)
