"""Who may see the status page and the metrics: staff, or a scraper holding the metrics token."""

from __future__ import annotations

import logging
import re

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from tests.conftest import point_at
from tests.ops.conftest import METRICS_TOKEN

pytestmark = pytest.mark.django_db

STATUS_URL = "/admin/resilience/status/"


def test_status_page__anonymous_is_sent_to_the_admin_login(client):
    response = client.get(STATUS_URL)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=/admin/resilience/status/")


def test_status_page__non_staff_user_is_sent_to_the_admin_login(client, member_user):
    client.force_login(member_user)

    response = client.get(STATUS_URL)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_status_page__staff_sees_it_and_the_admin_index_links_to_it(client, staff_user):
    client.force_login(staff_user)

    page = client.get(STATUS_URL)
    index = client.get("/admin/")

    assert page.status_code == 200
    assert page["Cache-Control"].startswith("max-age=0")
    html = page.content.decode()
    for heading in ("Circuit breakers", "Receipt buffer", "Rate limits"):
        assert heading in html
    assert 'href="/admin/resilience/status/"' in index.content.decode()


def test_status_page__loads_nothing_from_the_network(admin_client):
    html = admin_client.get(STATUS_URL).content.decode()

    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?(?:https?:)?//""", html)
    assert "url(" not in html
    assert "@import" not in html
    content = html.split('id="content-main"')[1]
    assert "<script" not in content
    assert content.count("<svg") >= 2  # the charts are inline


def test_metrics__anonymous_without_token_is_refused(client, settings):
    point_at(settings, None, None, METRICS_TOKEN=METRICS_TOKEN)

    response = client.get("/metrics")

    assert response.status_code == 403
    assert b"resilience_" not in response.content


def test_metrics__no_token_configured_refuses_any_bearer(client):
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer None")

    assert response.status_code == 403


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {METRICS_TOKEN}x",
        f"Bearer {METRICS_TOKEN[:-1]}",
        f"Basic {METRICS_TOKEN}",
        METRICS_TOKEN,
        "Bearer ",
        "Bearer \u00e9t\u00e9",
    ],
    ids=["longer", "shorter", "basic-scheme", "no-scheme", "empty", "non-ascii"],
)
def test_metrics__wrong_token_is_refused_and_never_logged(client, settings, caplog, header):
    point_at(settings, None, None, METRICS_TOKEN=METRICS_TOKEN)
    caplog.set_level(logging.DEBUG)

    response = client.get("/metrics", HTTP_AUTHORIZATION=header)

    assert response.status_code == 403
    assert METRICS_TOKEN not in caplog.text


def test_metrics__right_token_is_served_and_never_logged(client, settings, caplog):
    point_at(settings, None, None, METRICS_TOKEN=METRICS_TOKEN)
    caplog.set_level(logging.DEBUG)

    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    text = response.content.decode()
    for name in (
        "resilience_ratelimit_requests_total",
        "resilience_breaker_state",
        "resilience_receipts_emitted_total",
        "resilience_receipts_in_buffer",
        "resilience_drain_batch_duration_seconds",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text
    assert METRICS_TOKEN not in caplog.text
    assert METRICS_TOKEN not in text


def test_metrics__staff_session_is_served_but_not_a_member_session(client, staff_user, member_user):
    client.force_login(member_user)
    refused = client.get("/metrics")
    client.force_login(staff_user)
    served = client.get("/metrics")

    assert refused.status_code == 403
    assert served.status_code == 200
    assert b'resilience_breaker_state{policy="memorygate",state="closed"} 1.0' in served.content


def test_metrics__only_get(admin_client):
    assert admin_client.post("/metrics").status_code == 405


@pytest.mark.parametrize("token", ["short", 12345, ""], ids=["short", "int", "empty"])
def test_check__metrics_token_must_be_a_long_string(settings, token):
    point_at(settings, None, None, METRICS_TOKEN=token)

    with pytest.raises(SystemCheckError, match=r"resilience\.E007") as error:
        call_command("check")

    if isinstance(token, str) and token:
        assert token not in str(error.value).replace("E007", "")
