"""The admin flow in a real browser: Playwright driving Debian's Chromium against a live server.

A staff member logs in, lowers a rule from 5 to 2 calls and the third request to its path is
refused with 429; then, with the circuit opened by real failures of the stub MemoryGate, resets it
from the status page, and the next receipt is delivered. Counters and breaker state are in real
Redis; the server is pytest-django's ``live_server`` (a threaded WSGI server in this process, so
the test and the server share settings). Screenshots of each step go to ``test-artifacts/``
(``TEST_ARTIFACTS_DIR`` to change).

Skipped, with the reason in pytest's ``-ra`` summary, when Playwright or Chromium is missing
(``apt-get install chromium``; ``playwright install`` cannot download browsers here), unless
``REQUIRE_BROWSER`` is set, as CI sets it: then a missing browser fails the run.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connections

from resilience.breaker import get_breaker
from resilience.integrations import get_memorygate_client
from resilience.models import RateLimitRule
from tests.conftest import PROJECT_ROOT, TENANT, point_at

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# .ci/run gives each run (SQLite, PostgreSQL) its own folder, so one does not overwrite the other.
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR") or PROJECT_ROOT / "test-artifacts")
PASSWORD = "browser-test-pass-123"
TIMEOUT_MS = 15_000

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the skip below says why
    sync_playwright = None

pytestmark = pytest.mark.browser


def _missing() -> str | None:
    if sync_playwright is None:
        return "playwright is not installed (pip install -r requirements-dev.txt)"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture(autouse=True)
def _browser_available() -> None:
    """Skipped where the browser is missing, with the reason in ``-ra``; a failure instead when
    ``REQUIRE_BROWSER`` is set (``.ci/run`` sets it: CI must not pass on a skipped browser)."""
    missing = _missing()
    if missing is None:
        return
    if os.environ.get("REQUIRE_BROWSER"):
        pytest.fail(f"browser test required (REQUIRE_BROWSER) but {missing}", pytrace=False)
    pytest.skip(f"browser test: {missing}")


T = TypeVar("T")


def off_loop(func: Callable[..., T], *args: Any) -> T:
    """Run ``func`` in a helper thread. While Playwright's sync API is open, its event loop
    belongs to this thread, and Django refuses ORM calls (and ``emit_receipt_sync``) here."""

    def call() -> T:
        try:
            return func(*args)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call).result()


@pytest.fixture
def page(request) -> Iterator[Page]:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:  # pragma: no cover - a guard: the sync API refuses to run inside a loop
        pytest.fail("Playwright's sync API cannot run inside a running asyncio loop.")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        try:
            yield page
        finally:
            shot = ARTIFACTS / f"{request.node.name}-last.png"
            page.screenshot(path=str(shot), full_page=True)
            context.close()
            browser.close()


def snap(page: Page, name: str) -> Path:
    path = ARTIFACTS / f"browser-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture
def site(live_server, patient_redis, stub_memorygate, settings, django_user_model):
    """The live site: limits on (Redis), MemoryGate the stub, and a superuser to log in as."""
    point_at(
        settings,
        stub_memorygate.url,
        stub_memorygate.api_key,
        RATE_LIMIT_ENABLED=True,
        RATE_LIMIT_DEFAULT_CALLS=None,
    )
    # Transactional tests flush the database, content types included, and they come back with
    # new ids: a cached old id would break the admin history's foreign key.
    ContentType.objects.clear_cache()
    django_user_model.objects.create_superuser("ops", "ops@example.invalid", PASSWORD)
    return live_server


def log_in(page: Page, base: str) -> None:
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#resilience-status-link")).to_be_visible()


@pytest.fixture
def rule(site) -> RateLimitRule:
    return RateLimitRule.objects.create(name="tasks", path="/v1/tasks", calls=5, window_seconds=60)


@pytest.mark.django_db(transaction=True)
def test_browser__staff_lowers_a_rule_and_the_third_request_is_refused(site, rule, page):
    base = site.url

    log_in(page, base)
    page.goto(f"{base}/admin/resilience/ratelimitrule/{rule.pk}/change/")
    page.fill("#id_calls", "2")
    snap(page, "rule-lowered-to-2")
    page.click("input[name=_save]")
    expect(page.locator(".messagelist .success")).to_contain_text("was changed successfully")
    snap(page, "rule-saved")

    statuses = [page.request.get(f"{base}/v1/tasks").status for _ in range(3)]

    assert off_loop(lambda: RateLimitRule.objects.get(pk=rule.pk).calls) == 2
    assert statuses == [405, 405, 429]  # GET is not allowed by the view, but it is counted
    refused = page.request.get(f"{base}/v1/tasks")
    assert refused.status == 429
    assert refused.json()["rule"] == "tasks"
    page.goto(f"{base}/admin/resilience/status/")
    row = page.locator('tr.rule[data-rule="db:tasks"]')
    expect(row.locator("td.blocked")).to_have_text("2")
    expect(row.locator("td.allowed")).to_have_text("2")
    snap(page, "status-rule-counts")


def send_receipt() -> dict[str, str]:
    return get_memorygate_client().emit_receipt_sync(
        tenant_id=TENANT,
        receipt_type="task.completed",
        from_principal={"kind": "worker", "id": "w-1"},
        to_principal={"kind": "system", "id": "asyncgate"},
        body={"ok": True},
    )


@pytest.fixture
def outage(site, stub_memorygate) -> int:
    """The circuit opened by real 503s, then MemoryGate back while the circuit stays open."""
    stub_memorygate.set_faults(fail_next=1000, fail_status=503)
    threshold = get_breaker("memorygate").policy.failure_threshold
    assert {send_receipt()["status"] for _ in range(threshold)} == {"buffered"}
    stub_memorygate.set_faults(fail_next=0)
    assert send_receipt()["reason"].startswith("circuit open")
    return threshold


@pytest.mark.django_db(transaction=True)
def test_browser__staff_resets_an_open_breaker_and_the_next_receipt_is_delivered(
    site, outage, page, stub_memorygate
):
    threshold = outage

    log_in(page, site.url)
    page.click("#resilience-status-link a.section")
    breaker = page.locator('tr.breaker[data-breaker="memorygate"]')
    expect(breaker).to_have_attribute("data-state", "open")
    expect(breaker).to_contain_text("HTTP 503")
    expect(page.locator('.figure[data-status="pending"] strong')).to_have_text(str(threshold + 1))
    snap(page, "status-breaker-open")

    breaker.get_by_role("button", name="Reset memorygate").click()

    expect(page.locator(".messagelist .success")).to_contain_text("Circuit memorygate reset")
    expect(breaker).to_have_attribute("data-state", "closed")
    snap(page, "status-breaker-reset")
    result = off_loop(send_receipt)
    assert result["status"] == "delivered"
    assert result["receipt_id"] in stub_memorygate.receipts()
