"""Per-rule allowed/blocked counts and most limited clients: tallied in process, flushed with the
registry's poll, read by the status page and the metrics, on real Redis and on the memory backend.
"""

from __future__ import annotations

import time

import pytest
from django.test import Client
from model_bakery import baker

from resilience.ratelimit import stats
from resilience.ratelimit.keys import digest
from resilience.ratelimit.rules import Rule
from resilience.registry import flush_stats
from tests.conftest import redis_cache_settings
from tests.ops.conftest import METRICS_TOKEN, metric_value, scraped_value

pytestmark = pytest.mark.django_db

STATUS_URL = "/admin/resilience/status/"
PATH = "/v1/tasks"


def limiting(settings, backend: str) -> None:
    settings.RESILIENCE = {
        **settings.RESILIENCE,
        "RATE_LIMIT_ENABLED": True,
        "RATE_LIMIT_BACKEND": backend,
        "RATE_LIMIT_DEFAULT_CALLS": None,
        "METRICS_TOKEN": METRICS_TOKEN,
    }


@pytest.fixture(params=["memory", "redis"])
def backend(request, settings) -> str:
    if request.param == "redis":
        request.getfixturevalue("patient_redis")
    limiting(settings, request.param)
    return request.param


def hit(client, times: int) -> list[int]:
    return [client.get(PATH).status_code for _ in range(times)]


def rule_row(page, name: str):
    return next(item["rule"] for item in page.context["rules"] if item["rule"].name == name)


def test_status_page__counts_allowed_blocked_and_most_limited_clients(
    backend, client, admin_client
):
    baker.make("resilience.RateLimitRule", name="tasks", path=PATH, calls=2, window_seconds=60)
    blocked_before = metric_value(
        "resilience_ratelimit_requests_total", rule="db:tasks", mode="enforce", result="blocked"
    )

    codes = hit(client, 5)

    assert codes.count(429) == 3
    page = admin_client.get(STATUS_URL)
    row = rule_row(page, "tasks")
    assert (row.allowed, row.blocked, row.blocked_last_hour) == (2, 3, 3)
    assert (row.path, row.mode, row.rate) == (PATH, "enforce", "2 per 60 s")
    assert row.top_clients == [(digest("ip:127.0.0.1")[: stats.CLIENT_CHARS], 3)]
    assert sum(row.blocked_per_minute) == 3
    assert page.context["limits"].blocked_per_minute[-1] >= 3
    clients_cell = page.content.decode().split('data-rule="db:tasks"')[1].split("</tr>")[0]
    assert "127.0.0.1" not in clients_cell
    assert digest("ip:127.0.0.1")[:12] in clients_cell
    assert digest("ip:127.0.0.1") not in clients_cell  # truncated, never the whole digest
    assert (
        metric_value(
            "resilience_ratelimit_requests_total",
            rule="db:tasks",
            mode="enforce",
            result="blocked",
        )
        == blocked_before + 3
    )


def test_stats__refused_request_counts_only_on_the_refusing_rule(backend, client, admin_client):
    baker.make("resilience.RateLimitRule", name="tight", path=PATH, calls=2, window_seconds=60)
    baker.make("resilience.RateLimitRule", name="loose", path=PATH, calls=10, window_seconds=60)
    baker.make(
        "resilience.RateLimitRule",
        name="watch",
        path=PATH,
        calls=1,
        window_seconds=60,
        mode="shadow",
    )

    assert hit(client, 4) == [405, 405, 429, 429]

    page = admin_client.get(STATUS_URL)
    tight, loose, watch = (rule_row(page, n) for n in ("tight", "loose", "watch"))
    assert (tight.allowed, tight.blocked) == (2, 2)
    assert (loose.allowed, loose.blocked) == (2, 0)
    # A shadow rule counts what it would have done; its counter is consumed only on commits.
    assert watch.mode == "shadow"
    assert (watch.allowed, watch.blocked) == (1, 3)


def test_stats__fleet_counts_add_up_in_redis_buckets(redis_backend, redis_client, settings):
    """Two processes' tallies, flushed through the same pipeline code, add up per minute."""
    limiting(settings, "redis")
    rule = Rule(name="shared", path=PATH, calls=5, window_seconds=60, source="db")
    worker_a, worker_b = stats.RuleCounts(), stats.RuleCounts()
    for _ in range(3):
        worker_a.record(rule, True, "rl:{aaaa}:x")
    worker_a.record(rule, False, "rl:{aaaa}:x")
    worker_b.record(rule, False, "rl:{bbbb}:x")
    worker_b.record(rule, False, "rl:{aaaa}:x")

    for worker in (worker_a, worker_b):
        pipe = redis_client.pipeline(transaction=False)
        stats.queue_writes(pipe, worker.take(now=120 * 60))
        pipe.execute()

    counts = stats.read_minute_counts(redis_client, [120])
    assert counts == {120: {"db:shared:allowed": 3, "db:shared:blocked": 3}}
    top = stats.read_top_clients(redis_client, {"db:shared": [120]})
    assert top == {"db:shared": {"aaaa": 2, "bbbb": 1}}
    assert 0 < redis_client.ttl(f"{stats.KEY_PREFIX}120") <= stats.RETENTION_SECONDS
    assert 0 < redis_client.ttl(f"{stats.TOP_PREFIX}db:shared:120") <= stats.RETENTION_SECONDS


def test_stats__request_flushes_ride_on_the_generation_poll(redis_backend, redis_client, settings):
    """The request path writes its tallies with the generation GET, never a round trip of its own:
    within one poll interval nothing is written, and the poll's pipeline carries them."""
    limiting(settings, "redis")
    baker.make("resilience.RateLimitRule", name="tasks", path=PATH, calls=100, window_seconds=60)
    client = Client()
    hit(client, 1)  # the first request polls (and loads the rule)
    redis_client.config_resetstat()

    hit(client, 5)  # all within the poll interval: tallied in process only
    written = redis_client.info("commandstats").get("cmdstat_hincrby", {}).get("calls", 0)
    assert written == 0
    bucket = f"{stats.KEY_PREFIX}{stats.minute_of(time.time())}"
    assert flush_stats()
    assert int(redis_client.hget(bucket, "db:tasks:allowed") or 0) >= 5


def test_stats__tallies_are_bounded_per_flush():
    counts = stats.RuleCounts()
    rule = Rule(name="r", path=PATH, calls=1, window_seconds=60)
    for n in range(stats.MAX_CLIENTS_PER_FLUSH + 50):
        counts.record(rule, False, f"rl:{{client{n}}}:x")
    counts.record(rule, False, "rl:{client0}:x")

    batch = counts.take()

    (tally,) = batch.tallies
    assert tally.blocked == stats.MAX_CLIENTS_PER_FLUSH + 51
    assert len(tally.clients) == stats.MAX_CLIENTS_PER_FLUSH
    assert tally.clients["client0"] == 2
    assert counts.take() is None


def on_private_redis(settings, server, **resilience) -> None:
    """Settings on a Redis the test may stop, all through pytest-django's ``settings`` (so they
    are undone in order, unlike an ``override_settings`` interleaved with it)."""
    settings.CACHES = redis_cache_settings(server.url)
    settings.RESILIENCE = {**settings.RESILIENCE, "RATE_LIMIT_BACKEND": "redis", **resilience}


def test_stats__redis_down_keeps_requests_and_the_status_page_working(
    private_redis, settings, client, admin_client
):
    on_private_redis(
        settings,
        private_redis,
        RATE_LIMIT_ENABLED=True,
        RATE_LIMIT_DEFAULT_CALLS=None,
        METRICS_TOKEN=METRICS_TOKEN,
    )
    baker.make("resilience.RateLimitRule", name="tasks", path=PATH, calls=2, window_seconds=60)
    assert hit(client, 1) == [405]
    unavailable_before = metric_value(
        "resilience_ratelimit_backend_unavailable_total", outcome="allowed"
    )
    private_redis.stop()

    assert hit(client, 3) == [405, 405, 405]  # fail open
    page = admin_client.get(STATUS_URL)
    scrape = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}")

    assert page.status_code == 200
    assert "Counts could not be read" in page.content.decode()
    assert page.context["breakers"][0]["status"].store == "memory-fallback"
    assert scrape.status_code == 200
    name = "resilience_ratelimit_backend_unavailable_total"
    assert scraped_value(scrape.content.decode(), name, outcome="allowed") == unavailable_before + 3


def test_stats__a_refused_flush_is_dropped_not_raised(private_redis, settings):
    on_private_redis(settings, private_redis, RATE_LIMIT_ENABLED=True)
    stats.counts.record(Rule(name="r", path=PATH, calls=1, window_seconds=60), True, "")
    private_redis.stop()

    assert flush_stats() is False
    assert stats.counts.take() is None


def test_client_of__reads_the_hash_tag_and_nothing_else():
    assert stats.client_of("rl:{0123456789abcdef0123}:db%3Ax:sw60") == "0123456789abcdef0123"
    assert stats.client_of("garbage") == "?"
