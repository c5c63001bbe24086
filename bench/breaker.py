"""What a circuit breaker adds to a healthy call, and what it asks of Redis.

Run from the project root: ``python bench/breaker.py`` (a few seconds). It configures Django
itself (``asyncgate_site.settings``) on the Redis named by ``BENCH_REDIS_URL`` (default
``redis://127.0.0.1:6379/14``; only its ``resilience:breaker:{bench-*}`` keys are touched), and
prints, from one run:

* the cost of a no-op call unprotected, protected by a breaker on the memory store and on the
  Redis store (CLOSED), and, for scale, of one trivial ``EVALSHA`` (the floor of any breaker that
  asks Redis on every call);
* Redis commands per healthy call (target 0) and per failure (target 1), from
  ``INFO commandstats`` deltas. ``commandstats`` also counts the commands a Lua script runs inside
  Redis; those are left out, so the figure is the client's round trips. It is server-wide: other
  clients of the same server during the run inflate it, which the idle window printed beside it
  shows.

``BENCH_CALLS`` (default 20000) sets the calls per timing; each timing is the best of 3 runs.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
os.environ["DJANGO_SETTINGS_MODULE"] = "asyncgate_site.settings"
os.environ["REDIS_URL"] = REDIS_URL
os.environ.setdefault("RESILIENCE_LOG_LEVEL", "ERROR")

import django  # noqa: E402

django.setup()

from resilience.breaker import Breaker, Policy  # noqa: E402
from resilience.breaker.stores.memory import MemoryStore  # noqa: E402
from resilience.breaker.stores.redis import SCRIPT_COMMANDS, RedisStore  # noqa: E402
from resilience.redis import get_sync_client, sync_script  # noqa: E402

CALLS = int(os.environ.get("BENCH_CALLS", "20000"))
FAILURES = 500
REPEATS = 3
# Failures only count: the circuit never opens during the run.
POLICY = Policy(failure_threshold=10**9, timeout_seconds=60)


def noop() -> None:
    return None


def best_ns_per_call(body: Callable[[], None], calls: int = CALLS) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter_ns()
        for _ in range(calls):
            body()
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


def protected(breaker: Breaker) -> Callable[[], None]:
    def call() -> None:
        permit = breaker.acquire()
        noop()
        permit.success()

    return call


def client_commands() -> int:
    stats = get_sync_client("default").info("commandstats")
    return sum(
        value["calls"]
        for key, value in stats.items()
        if key.removeprefix("cmdstat_") not in SCRIPT_COMMANDS | {"info"}
    )


def commands_during(body: Callable[[], None], times: int) -> tuple[float, float]:
    """(commands per call while running ``body``, commands per call-time in an idle window)."""
    before = client_commands()
    start = time.perf_counter()
    for _ in range(times):
        body()
    elapsed = time.perf_counter() - start
    used = client_commands() - before
    idle_before = client_commands()
    time.sleep(elapsed)
    idle = client_commands() - idle_before
    return used / times, idle / times


def main() -> None:
    client = get_sync_client("default")
    for key in client.scan_iter("resilience:breaker:{bench-*"):
        client.delete(key)

    memory = Breaker("bench-memory", MemoryStore("bench-memory", POLICY))
    shared = Breaker("bench-redis", RedisStore("bench-redis", POLICY))
    failing = Breaker("bench-failures", RedisStore("bench-failures", POLICY))
    evalsha = sync_script("default", "return 1")
    for warm in (protected(memory), protected(shared), evalsha):
        warm()
    failing.acquire().failure("warm-up")

    bare = best_ns_per_call(noop)
    on_memory = best_ns_per_call(protected(memory))
    on_redis = best_ns_per_call(protected(shared))
    round_trip = best_ns_per_call(evalsha, calls=max(1, CALLS // 10))
    healthy, healthy_idle = commands_during(protected(shared), CALLS)

    def fail() -> None:
        failing.acquire().failure("bench")

    per_failure, failure_idle = commands_during(fail, FAILURES)

    version = client.info("server")["redis_version"]
    print(
        f"breaker bench: {CALLS} calls per timing, best of {REPEATS}; {REDIS_URL} (Redis {version})"
    )
    print(f"  unprotected no-op call               {bare / 1000:8.3f} us")
    for label, cost in (("memory store", on_memory), ("Redis store ", on_redis)):
        print(
            f"  protected, {label} (CLOSED)     {cost / 1000:8.3f} us"
            f"   adds {(cost - bare) / 1000:6.3f} us"
        )
    print(f"  one trivial EVALSHA (reference)      {round_trip / 1000:8.3f} us")
    print(
        f"  Redis store's added cost / one EVALSHA round trip: {(on_redis - bare) / round_trip:.3f}"
        "  (target: well below 1, no round trip on a healthy call)"
    )
    print(
        f"  Redis commands per healthy call: {healthy:.4f}  (target 0; "
        f"other clients in an idle window as long: {healthy_idle:.4f})"
    )
    print(
        f"  Redis commands per failure:      {per_failure:.4f}  (target 1; "
        f"other clients in an idle window as long: {failure_idle:.4f})"
    )

    for key in client.scan_iter("resilience:breaker:{bench-*"):
        client.delete(key)


if __name__ == "__main__":
    main()
