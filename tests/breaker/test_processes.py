"""The fleet: real OS processes sharing one breaker through the test's Redis."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time

import pytest

from resilience.breaker import Breaker, CircuitOpen, Policy
from resilience.breaker.stores.redis import RedisStore
from tests.breaker.conftest import start_worker
from tests.breaker.worker import OBSERVED_KEY

pytestmark = pytest.mark.slow


def shared_breaker(name: str, **policy) -> Breaker:
    return Breaker(name, RedisStore(name, Policy(**policy), snapshot_max_age=0))


class Lines:
    """The stdout lines of a worker, read on a thread so waits can time out."""

    def __init__(self, process) -> None:
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def expect(self, wanted: str, timeout: float = 5.0) -> None:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.process.kill()
            pytest.fail(
                f"worker did not print {wanted!r} within {timeout} s: {self.process.stderr.read()}"
            )
        assert line == wanted


def test_fleet__four_processes_never_exceed_half_open_max_calls(redis_backend, redis_client):
    parent = shared_breaker(
        "fleet",
        failure_threshold=1,
        timeout_seconds=0.2,
        half_open_max_calls=2,
        success_threshold=1_000_000,
    )
    parent.acquire().failure("down")
    start_at = time.time() + 2.0  # every worker has imported Django by then
    workers = [
        start_worker(redis_backend, "probe", "fleet", str(start_at), "1.0") for _ in range(4)
    ]
    outputs = [worker.communicate(timeout=30) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), [err for _, err in outputs]
    probes = [int(out.strip()) for out, _ in outputs]
    observed = [int(value) for value in redis_client.lrange(OBSERVED_KEY, 0, -1)]
    assert sum(probes) == len(observed) > 20
    assert max(observed) <= 2
    assert all(count > 0 for count in probes), probes  # every process got slots in turn
    stats = parent.stats()
    assert (stats["state"], stats["probes_in_flight"]) == ("half_open", 0)


def test_fleet__probe_holder_killed_with_sigkill_gives_its_slot_back(redis_backend):
    parent = shared_breaker(
        "killed",
        failure_threshold=1,
        timeout_seconds=0.1,
        half_open_max_calls=1,
        success_threshold=1,
    )
    parent.acquire().failure("down")
    time.sleep(0.15)
    holder = start_worker(redis_backend, "hold", "killed", "1.0")
    Lines(holder).expect("PROBE", timeout=15)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=5)
    with pytest.raises(CircuitOpen):
        parent.acquire()  # the dead worker's lease still holds the only slot
    deadline = time.monotonic() + 5
    while True:
        try:
            permit = parent.acquire()
            break
        except CircuitOpen:
            assert time.monotonic() < deadline, "the killed worker's slot never came back"
            time.sleep(0.05)
    assert permit.is_probe
    permit.success()
    assert parent.stats()["state"] == "closed"


def test_fleet__force_open_and_reset_in_one_process_are_seen_by_another(redis_backend):
    parent = shared_breaker("seen", failure_threshold=1, timeout_seconds=60)
    parent.stats()  # creates the hash with these numbers
    watcher = start_worker(redis_backend, "watch", "seen", "30")
    lines = Lines(watcher)
    try:
        lines.expect("ready", timeout=15)
        lines.expect("admitted")
        parent.force_open()
        lines.expect("refused")
        parent.clear_override()
        lines.expect("admitted")
        parent.acquire().failure("down")
        lines.expect("refused")
        parent.reset()
        lines.expect("admitted")
    finally:
        watcher.kill()
        watcher.wait(timeout=5)
