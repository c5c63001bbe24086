"""A worker process of the multi-process breaker tests: ``python -m tests.breaker.worker MODE``.

Each worker is its own OS process with its own breaker snapshot, talking to the Redis named by
``REDIS_URL`` (the test's database), exactly as a web worker would. Modes:

* ``probe NAME START_AT SECONDS``: from wall-clock ``START_AT`` for ``SECONDS``, take probes
  whenever a slot is free; while holding one, bump a shared in-flight counter in Redis and record
  its value, so the test can see the most probes ever in flight at once. Prints the probe count.
* ``hold NAME LEASE``: take one probe with a ``LEASE``-second lease, print ``PROBE``, then sleep
  (the test kills it with SIGKILL).
* ``watch NAME SECONDS``: call the breaker every 20 ms and print ``admitted`` or ``refused``
  whenever the answer changes, then ``done``.
"""

from __future__ import annotations

import os
import random
import sys
import time

import django

IN_FLIGHT_KEY = "test:breaker:in-flight"
OBSERVED_KEY = "test:breaker:observed"


def breaker(name: str, lease: float = 10.0):
    from resilience.breaker import Breaker, Policy
    from resilience.breaker.stores.redis import RedisStore

    # The policy only seeds a missing hash; the test has already written the one in force.
    return Breaker(name, RedisStore(name, Policy(), probe_lease_seconds=lease))


def probe(name: str, start_at: float, seconds: float) -> None:
    from resilience.breaker import CircuitOpen
    from resilience.redis import get_sync_client

    client = get_sync_client("default")
    circuit = breaker(name)
    time.sleep(max(0.0, start_at - time.time()))
    deadline = time.monotonic() + seconds
    probes = 0
    while time.monotonic() < deadline:
        try:
            permit = circuit.acquire()
        except CircuitOpen:
            time.sleep(0.001)
            continue
        probes += 1
        client.rpush(OBSERVED_KEY, client.incr(IN_FLIGHT_KEY))
        time.sleep(random.uniform(0, 0.004))
        client.decr(IN_FLIGHT_KEY)
        if probes % 2:
            permit.success()
        else:
            permit.ignore()
    print(probes, flush=True)


def hold(name: str, lease: float) -> None:
    circuit = breaker(name, lease=lease)
    permit = circuit.acquire()
    print("PROBE" if permit.is_probe else "NOT-A-PROBE", flush=True)
    time.sleep(60)


def watch(name: str, seconds: float) -> None:
    from resilience.breaker import CircuitOpen

    circuit = breaker(name)
    print("ready", flush=True)
    last = None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            circuit.acquire().success()
            answer = "admitted"
        except CircuitOpen:
            answer = "refused"
        if answer != last:
            print(answer, flush=True)
            last = answer
        time.sleep(0.02)
    print("done", flush=True)


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "asyncgate_site.settings")
    django.setup()
    mode, name, *rest = argv
    if mode == "probe":
        probe(name, float(rest[0]), float(rest[1]))
    elif mode == "hold":
        hold(name, float(rest[0]))
    elif mode == "watch":
        watch(name, float(rest[0]))
    else:
        raise SystemExit(f"Unknown mode {mode!r}: use probe, hold or watch.")


if __name__ == "__main__":
    main(sys.argv[1:])
