"""The ``Breaker`` API callers use: permits, guards, the decorator, async twins, signals, logs."""

from __future__ import annotations

import asyncio
import logging

import pytest

from resilience import signals
from resilience.breaker import Breaker, CircuitOpen, Outcome, Policy
from resilience.breaker.stores.memory import MemoryStore


@pytest.fixture
def breaker(clock) -> Breaker:
    policy = Policy(failure_threshold=2, timeout_seconds=10, half_open_max_calls=1)
    return Breaker("api", MemoryStore("api", policy, clock=clock))


def test_guard__exception_counts_as_failure_and_is_reraised(breaker):
    with pytest.raises(ConnectionError), breaker.guard():
        raise ConnectionError("refused")
    stats = breaker.stats()
    assert (stats["failure_count"], stats["last_error"]) == (1, "ConnectionError: refused")


def test_guard__classify_exception_can_ignore_an_error(breaker):
    with pytest.raises(KeyError), breaker.guard(classify_exception=lambda exc: Outcome.IGNORE):
        raise KeyError("not the service's fault")
    stats = breaker.stats()
    assert (stats["failure_count"], stats["total_failures"], stats["total_successes"]) == (0, 0, 0)


def test_guard__block_without_observe_is_a_success(breaker):
    breaker.acquire().failure("one")
    with breaker.guard():
        pass
    assert breaker.stats()["failure_count"] == 0


def test_guard__refused_call_never_runs_the_block(breaker):
    breaker.force_open()
    ran = []
    with pytest.raises(CircuitOpen), breaker.guard():
        ran.append(True)
    assert ran == []


def test_guard__failure_of_a_returned_response_is_described_without_its_content(breaker):
    class Response:
        status_code = 503
        text = "Bearer sekrit"

    with breaker.guard(classify=lambda r: Outcome.FAILURE) as call:
        call.observe(Response())
    assert breaker.stats()["last_error"] == "HTTP 503 (Response)"


def test_aguard__cancellation_is_neither_success_nor_failure(breaker):
    async def scenario():
        breaker.acquire().failure("one")
        with pytest.raises(asyncio.CancelledError):
            async with breaker.aguard():
                raise asyncio.CancelledError
        return await breaker.astats()

    stats = asyncio.run(scenario())
    assert (stats["failure_count"], stats["total_successes"]) == (1, 0)


def test_protect__sync_and_async_functions(breaker):
    @breaker.protect(classify=lambda value: Outcome.FAILURE if value < 0 else Outcome.SUCCESS)
    def sync_call(value: int) -> int:
        return value

    @breaker.protect(classify=lambda value: Outcome.FAILURE if value < 0 else Outcome.SUCCESS)
    async def async_call(value: int) -> int:
        return value

    assert sync_call(1) == 1
    assert asyncio.run(async_call(-1)) == -1
    assert sync_call.__name__ == "sync_call"
    assert breaker.stats()["failure_count"] == 1
    assert asyncio.run(async_call(-2)) == -2
    with pytest.raises(CircuitOpen):
        sync_call(1)
    with pytest.raises(CircuitOpen):
        asyncio.run(async_call(1))


def test_async_twins__acquire_settle_stats_reset(breaker):
    async def scenario():
        for _ in range(2):
            await (await breaker.aacquire()).afailure("down")
        with pytest.raises(CircuitOpen):
            await breaker.aacquire()
        opened = await breaker.astats()
        await breaker.areset()
        permit = await breaker.aacquire()
        await permit.aignore()
        return opened, await breaker.astats()

    opened, after = asyncio.run(scenario())
    assert opened["state"] == "open"
    assert (after["state"], after["total_calls"]) == ("closed", 1)


def test_signals__each_transition_sent_once_with_documented_arguments(breaker, clock):
    received = []

    def listener(signal_name):
        def receive(sender, **kwargs):
            received.append((signal_name, sender, kwargs))

        return receive

    receivers = {
        "opened": listener("opened"),
        "half_opened": listener("half_opened"),
        "closed": listener("closed"),
    }
    signals.circuit_opened.connect(receivers["opened"])
    signals.circuit_half_opened.connect(receivers["half_opened"])
    signals.circuit_closed.connect(receivers["closed"])
    try:
        breaker.acquire().failure("a")
        breaker.acquire().failure("b")
        clock.advance(10)
        probe = breaker.acquire()
        probe.success()
        breaker.acquire().success()
        probe_closed = breaker.stats()["state"]
    finally:
        signals.circuit_opened.disconnect(receivers["opened"])
        signals.circuit_half_opened.disconnect(receivers["half_opened"])
        signals.circuit_closed.disconnect(receivers["closed"])
    assert probe_closed == "closed"
    names = [name for name, _, _ in received]
    assert names == ["opened", "half_opened", "closed"]
    _, sender, kwargs = received[0]
    assert sender is Breaker
    assert kwargs["name"] == "api"
    assert (kwargs["state"], kwargs["previous_state"]) == ("open", "closed")
    assert kwargs["stats"]["failure_count"] == 2
    assert kwargs["stats"]["last_error"] == "b"


def test_signals__a_broken_receiver_does_not_fail_the_call(breaker, caplog):
    def broken(sender, **kwargs):
        raise ValueError("receiver bug")

    signals.circuit_opened.connect(broken)
    try:
        breaker.acquire().failure("a")
        breaker.acquire().failure("b")
    finally:
        signals.circuit_opened.disconnect(broken)
    assert breaker.stats()["state"] == "open"
    assert "receiver bug" in caplog.text


def test_logging__every_transition_logged_and_secrets_scrubbed(breaker, clock, caplog):
    caplog.set_level(logging.INFO, logger="resilience.breaker")
    breaker.acquire().failure("401 for https://svc:hunter2@mg.internal Bearer tok-123 api_key=k1")
    breaker.acquire().failure("Authorization: Bearer tok-456")
    clock.advance(10)
    breaker.acquire().success()
    breaker.acquire().success()
    messages = [r.getMessage() for r in caplog.records if r.name == "resilience.breaker"]
    assert any("opened" in m for m in messages)
    assert any("half-open" in m for m in messages)
    assert any("closed" in m for m in messages)
    for secret in ("hunter2", "tok-123", "tok-456", "k1"):
        assert secret not in caplog.text
    assert "tok-456" not in breaker.stats()["last_error"]


def test_disabled__guard_passes_through_without_recording(clock):
    breaker = Breaker("off", MemoryStore("off", Policy(enabled=False, failure_threshold=1)))
    for _ in range(3):
        with pytest.raises(OSError), breaker.guard():
            raise OSError("down")
    stats = breaker.stats()
    assert (stats["state"], stats["total_calls"], stats["total_failures"]) == ("closed", 0, 0)
