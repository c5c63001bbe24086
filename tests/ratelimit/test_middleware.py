"""RateLimitMiddleware through Django's full request handler, against both backends."""

from __future__ import annotations

import json
import logging

import pytest
from model_bakery import baker

from resilience.models import RateLimitRule
from resilience.ratelimit.limiter import get_rate_limiter
from tests.ratelimit.conftest import configure, use_settings


def get(client, path="/t/sync", **extra):
    return client.get(path, **extra)


def test_middleware__allowed_responses_carry_informational_headers(backend, client):
    configure(path="/t/sync", calls=3, window_seconds=60, name="three")
    response = get(client)
    assert response.status_code == 200
    assert response["X-RateLimit-Limit"] == "3"
    assert response["X-RateLimit-Remaining"] == "2"
    assert response["X-RateLimit-Reset"] == "60"
    assert response["RateLimit-Policy"] == '"three";q=3;w=60'
    assert response["RateLimit"] == '"three";r=2;t=60'
    assert "Retry-After" not in response


def test_middleware__refuses_with_429_json_naming_the_rule(backend, client):
    configure(path="/t/sync", calls=2, window_seconds=60, name="two-a-minute")
    assert [get(client).status_code for _ in range(2)] == [200, 200]
    response = get(client)
    assert response.status_code == 429
    body = json.loads(response.content)
    assert body["rule"] == "two-a-minute"
    assert body["error"] == "rate_limited"
    assert 59 <= int(response["Retry-After"]) <= 60 == body["window_seconds"]
    assert response["X-RateLimit-Remaining"] == "0"


def test_middleware__retry_after_comes_from_the_algorithm(backend, client):
    configure(path="/t/sync", calls=6, window_seconds=60, algorithm="token_bucket")
    assert all(get(client).status_code == 200 for _ in range(6))
    response = get(client)
    assert response.status_code == 429
    # GCRA: one slot every 10 s; the header is rounded up, never early.
    assert response["Retry-After"] == "10"


def test_middleware__all_or_nothing_with_two_rules(backend, client):
    configure(path="/t/sync", calls=5, window_seconds=60, name="a-five")
    configure(path="/t/sync", calls=1, window_seconds=60, name="b-one", key_prefix="b:")
    configure(path="/t/other", calls=5, window_seconds=60, name="a-elsewhere")
    assert get(client).status_code == 200
    for _ in range(4):
        refused = get(client)
        assert refused.status_code == 429
        assert json.loads(refused.content)["rule"] == "b-one"
    # Rule A was consumed once, by the admitted request only.
    get_rate_limiter().remove_endpoint("/t/sync")
    configure(path="/t/sync", calls=5, window_seconds=60, name="a-five")
    assert get(client)["X-RateLimit-Remaining"] == "3"


def test_middleware__code_rules_sharing_a_prefix_share_a_counter_on_both_paths(backend, client):
    configure(path="/t/sync", calls=2, window_seconds=60, key_prefix="shared:")
    configure(path="/t/other", calls=2, window_seconds=60, key_prefix="shared:")
    statuses = [get(client, path).status_code for path in ("/t/sync", "/t/other", "/t/sync")]
    assert statuses == [200, 200, 429]
    assert get(client, "/t/other").status_code == 429


def test_middleware__a_get_rule_also_limits_head(backend, client):
    """Django answers HEAD with the GET view: a GET-only limit must not be escaped by HEAD."""
    configure(path="/t/sync", calls=1, window_seconds=60, methods="GET")
    assert get(client).status_code == 200
    assert client.head("/t/sync").status_code == 429
    assert client.post("/t/sync").status_code == 200


def test_middleware__exempt_paths_and_the_default_limit(backend, client, settings):
    use_settings(settings, RATE_LIMIT_DEFAULT_CALLS=2, RATE_LIMIT_DEFAULT_WINDOW_SECONDS=60)
    assert [get(client, "/v1/health").status_code for _ in range(5)] == [200] * 5
    statuses = [get(client, p).status_code for p in ("/t/sync", "/t/other", "/t/deep/a")]
    assert statuses == [200, 200, 429]  # one default counter for every unmatched path
    assert get(client, "/t/sync")["RateLimit-Policy"] == '"default";q=2;w=60'


def test_middleware__no_default_means_unmatched_paths_are_free(backend, client):
    responses = [get(client, "/t/other") for _ in range(5)]
    assert all(r.status_code == 200 and "X-RateLimit-Limit" not in r for r in responses)


def test_middleware__shadow_rules_log_and_never_block(backend, client, caplog):
    configure(path="/t/sync", calls=1, window_seconds=60, mode="shadow", name="shadowed")
    with caplog.at_level(logging.WARNING, logger="resilience.ratelimit"):
        assert [get(client).status_code for _ in range(5)] == [200] * 5
    lines = [r for r in caplog.records if "shadowed" in r.getMessage()]
    assert len(lines) == 1  # throttled: one line per interval, not per request
    assert "would have refused GET /t/sync" in lines[0].getMessage()


def test_middleware__disabled_passes_straight_through(backend, client, settings):
    configure(path="/t/sync", calls=1, window_seconds=60)
    use_settings(settings, RATE_LIMIT_ENABLED=False)
    responses = [get(client) for _ in range(3)]
    assert all(r.status_code == 200 and "X-RateLimit-Limit" not in r for r in responses)


def test_middleware__database_rules_win_over_code_rules(backend, client, db):
    configure(path="/t/sync", calls=100, window_seconds=60, name="code")
    baker.make(RateLimitRule, name="staff", path="/t/sync", calls=1, window_seconds=60)
    assert get(client).status_code == 200
    assert json.loads(get(client).content)["rule"] == "staff"


def test_middleware__zero_database_queries_once_warm(
    backend, client, db, django_assert_num_queries
):
    baker.make(RateLimitRule, name="db-rule", path="/t/*", calls=50, window_seconds=60)
    assert get(client)["X-RateLimit-Limit"] == "50"  # warms the snapshot
    with django_assert_num_queries(0):
        for path in ("/t/sync", "/t/other", "/t/sync", "/nowhere", "/v1/health"):
            get(client, path)
    assert get(client)["X-RateLimit-Remaining"] == "45"  # four hits before this one


def test_middleware__rule_saved_in_this_process_applies_at_once(
    backend, client, db, django_capture_on_commit_callbacks
):
    rule = baker.make(RateLimitRule, name="live", path="/t/sync", calls=50, window_seconds=60)
    assert get(client)["X-RateLimit-Limit"] == "50"
    with django_capture_on_commit_callbacks(execute=True):
        rule.calls = 7
        rule.save()
    assert get(client)["X-RateLimit-Limit"] == "7"
    with django_capture_on_commit_callbacks(execute=True):
        rule.delete()
    assert "X-RateLimit-Limit" not in get(client)


def test_middleware__bulk_writes_apply_at_once(
    backend, client, db, django_capture_on_commit_callbacks
):
    """``update()``, ``bulk_create()`` and ``bulk_update()`` send no ``post_save``; the rules'
    queryset announces them, so code and shells that write rules in bulk are in force too."""
    baker.make(RateLimitRule, name="live", path="/t/sync", calls=50, window_seconds=60)
    assert get(client)["X-RateLimit-Limit"] == "50"
    with django_capture_on_commit_callbacks(execute=True):
        RateLimitRule.objects.filter(name="live").update(calls=7)
    assert get(client)["X-RateLimit-Limit"] == "7"
    with django_capture_on_commit_callbacks(execute=True):
        (other,) = RateLimitRule.objects.bulk_create(
            [RateLimitRule(name="other", path="/t/other", calls=9, window_seconds=60)]
        )
    assert get(client, "/t/other")["X-RateLimit-Limit"] == "9"
    other.calls = 4
    with django_capture_on_commit_callbacks(execute=True):
        RateLimitRule.objects.bulk_update([other], ["calls"])
    assert get(client, "/t/other")["X-RateLimit-Limit"] == "4"


# Client identity through the whole stack ------------------------------------------------------


def test_middleware__forged_xff_cannot_poison_another_clients_counter(backend, client, settings):
    use_settings(settings, RATE_LIMIT_TRUSTED_PROXIES=["127.0.0.1/32"])
    configure(path="/t/sync", calls=2, window_seconds=60)
    victim = "203.0.113.7"
    # The attacker puts the victim's address first; the proxy appends the attacker's real one.
    for _ in range(5):
        get(client, HTTP_X_FORWARDED_FOR=f"{victim}, 198.51.100.9")
    assert [get(client, HTTP_X_FORWARDED_FOR=victim).status_code for _ in range(3)] == [
        200,
        200,
        429,
    ]


@pytest.mark.parametrize("xff", ["garbage", "203.0.113.7, <script>", "", ",,,"])
def test_middleware__malformed_xff_cannot_bypass(backend, client, settings, xff):
    use_settings(settings, RATE_LIMIT_TRUSTED_PROXIES=["127.0.0.1/32"])
    configure(path="/t/sync", calls=2, window_seconds=60)
    statuses = [get(client, HTTP_X_FORWARDED_FOR=xff).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    # It fell back to REMOTE_ADDR, the same counter as a request without the header.
    assert get(client).status_code == 429
    assert get(client, HTTP_X_FORWARDED_FOR="192.0.2.44").status_code == 200


def test_middleware__garbage_api_keys_fall_back_to_ip(backend, client):
    configure(path="/t/sync", calls=2, window_seconds=60, key="api_key")
    garbage = [
        {"HTTP_AUTHORIZATION": "Bearer "},
        {"HTTP_AUTHORIZATION": "Bearer two words"},
        {"HTTP_X_API_KEY": "\x01\x02"},
    ]
    statuses = [get(client, **headers).status_code for headers in garbage]
    assert statuses == [200, 200, 429]  # one counter: the client's IP
    valid = [get(client, HTTP_AUTHORIZATION="Bearer good-key").status_code for _ in range(3)]
    assert valid == [200, 200, 429]
    assert get(client, HTTP_X_API_KEY="other-key").status_code == 200


def test_middleware__api_keys_never_reach_redis_raw(limiting, redis_backend, client, redis_client):
    configure(path="/t/sync", calls=2, window_seconds=60, key="api_key")
    get(client, HTTP_AUTHORIZATION="Bearer top-secret-key")
    stored = b" ".join(redis_client.keys("*"))
    assert stored and b"top-secret-key" not in stored and b"127.0.0.1" not in stored


def test_middleware__users_are_counted_by_account(backend, client, django_user_model):
    configure(path="/t/sync", calls=2, window_seconds=60, key="user_or_ip")
    alice = django_user_model.objects.create_user("alice", password="pw")
    client.force_login(alice)
    assert [get(client).status_code for _ in range(3)] == [200, 200, 429]
    client.logout()
    assert get(client).status_code == 200  # anonymous: by IP, another counter


# Redis unreachable ------------------------------------------------------------------------


@pytest.mark.usefixtures("limiting")
@pytest.mark.parametrize("fail_open", [True, False])
def test_middleware__redis_down_never_500s_and_logs_once(
    private_redis_backend, client, settings, caplog, fail_open
):
    use_settings(settings, RATE_LIMIT_BACKEND="redis", RATE_LIMIT_FAIL_OPEN=fail_open)
    configure(path="/t/sync", calls=100, window_seconds=60)
    assert get(client).status_code == 200
    private_redis_backend.stop()
    with caplog.at_level(logging.ERROR, logger="resilience.ratelimit"):
        responses = [get(client) for _ in range(20)]
    if fail_open:
        assert {r.status_code for r in responses} == {200}
    else:
        assert {r.status_code for r in responses} == {503}
        assert responses[0]["Retry-After"] == "5"
        assert json.loads(responses[0].content)["error"] == "rate_limiter_unavailable"
    outage_lines = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(outage_lines) == 1
    # Back up: limiting resumes without a restart.
    private_redis_backend.start()
    assert get(client)["X-RateLimit-Limit"] == "100"


# The decorator --------------------------------------------------------------------------------


def test_rate_limit_decorator__limits_a_sync_view(backend, client):
    assert [get(client, "/t/decorated").status_code for _ in range(3)] == [200, 200, 429]
    refused = get(client, "/t/decorated")
    assert json.loads(refused.content)["rule"] == "decorated-sync"
