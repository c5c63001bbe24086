"""Requests per second through Django's full WSGI handler, with and without rate limiting.

    python bench/ratelimit.py            # from the project root; about 20 s

Variants, each a ``WSGIHandler`` called with the same minimal environ on the same trivial view,
measured in interleaved rounds in one run (so machine noise hits every variant alike):

* ``bare``: no middleware at all.
* ``empty middleware``: a pass-through middleware, for scale: what any middleware costs.
* ``memory 1 rule``: ``RateLimitMiddleware`` on the memory backend.
* ``redis 1 rule`` / ``redis 3 rules``: ``RateLimitMiddleware`` on Redis, one or three rules on
  the path (one script round trip either way).
* ``evalsha floor``: a middleware that runs one trivial ``EVALSHA`` and nothing else: the floor of
  any one-round-trip limiter.
* ``django-ratelimit``: its ``@ratelimit`` decorator on the same view, on the same Redis through
  the same django-redis cache.

Printed: median requests per second, ratios to ``bare`` and to django-ratelimit, the cost each
variant adds to a bare request and that cost relative to the floor's, Redis round trips per
request (counted at the client's socket) and Redis commands per request (``INFO commandstats``
deltas, commands inside scripts included), and one bare ``EVALSHA`` round trip measured in the
same run. Targets (DESIGN.md): redis added cost <= 1.3x the floor's, memory added cost < 10% of a
bare request, one round trip per request whatever the number of rules, zero database queries.

Redis: ``BENCH_REDIS_URL`` if set; else a private ``redis-server`` on a free port when the binary
is installed (so ``INFO commandstats`` counts only this run); else ``redis://127.0.0.1:6379/13``.
``BENCH_ROUNDS`` and ``BENCH_REQUESTS`` (per variant per round) size the run.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import django
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "21"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "500"))
HUGE = 10**9  # a limit no run reaches: we measure the cost of checking, not of refusing


def start_redis() -> tuple[str, subprocess.Popen | None]:
    if os.environ.get("BENCH_REDIS_URL"):
        return os.environ["BENCH_REDIS_URL"], None
    executable = shutil.which("redis-server")
    if executable is None:
        return "redis://127.0.0.1:6379/13", None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            executable,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    client.close()
    return f"redis://127.0.0.1:{port}/0", process


REDIS_URL, REDIS_PROCESS = start_redis()

settings.configure(
    DEBUG=False,
    SECRET_KEY="bench-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "resilience"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    CACHES={
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
        }
    },
    RESILIENCE={
        "RATE_LIMIT_ENABLED": True,
        "RATE_LIMIT_BACKEND": "redis",
        "RATE_LIMIT_DEFAULT_CALLS": None,
        "RATE_LIMIT_EXEMPT_PATHS": ("/admin/",),
    },
    RATELIMIT_USE_CACHE="default",
    USE_TZ=True,
    LOGGING_CONFIG=None,
)
django.setup()

import redis  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.urls import path  # noqa: E402
from django_ratelimit.decorators import ratelimit  # noqa: E402

from resilience.middleware import RateLimitMiddleware, get_rate_limiter  # noqa: E402
from resilience.ratelimit.backends.memory import MemoryBackend  # noqa: E402
from resilience.ratelimit.limiter import RateLimiter, _Config  # noqa: E402
from resilience.redis import get_sync_client, sync_script  # noqa: E402


def view(request):
    return HttpResponse(b"ok")


limited_by_django_ratelimit = ratelimit(key="ip", rate=f"{HUGE}/m", block=True)(view)


def dispatch(request, variant):
    """One URL pattern for every variant, so each pays the same URL resolution."""
    if variant == "drl1":
        return limited_by_django_ratelimit(request)
    return view(request)


urlpatterns = [path("<slug:variant>/x", dispatch)]

FLOOR_SCRIPT = "return 1"


class EmptyMiddleware:
    """Passes every request through: the cost of being a middleware at all."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)


class FloorMiddleware:
    """One trivial EVALSHA per request through the same client, and nothing else."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.script = sync_script("default", FLOOR_SCRIPT)

    def __call__(self, request):
        self.script(keys=["floor"], args=[])
        return self.get_response(request)


MEMORY_LIMITER = RateLimiter()
MEMORY_LIMITER._config = _Config(
    enabled=True, backend=MemoryBackend(), exempt=("/admin/",), trusted=(), fail_open=True
)


class MemoryRateLimitMiddleware(RateLimitMiddleware):
    """The real middleware, on a limiter whose backend is memory (the others use Redis)."""

    def __init__(self, get_response):
        super().__init__(get_response)
        self.limiter = MEMORY_LIMITER


def handler(middleware: list[str]) -> WSGIHandler:
    settings.MIDDLEWARE = middleware
    return WSGIHandler()


def environ_for(path_info: str) -> dict:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path_info,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "192.0.2.1",
        "HTTP_HOST": "bench",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
    }


def start_response(status, headers):
    if not status.startswith("200"):
        raise RuntimeError(f"unexpected {status}")


def run(app: WSGIHandler, path_info: str, count: int) -> float:
    """Seconds for ``count`` requests through the full handler."""
    base = environ_for(path_info)
    start = time.perf_counter()
    for _ in range(count):
        environ = dict(base)
        environ["wsgi.input"] = io.BytesIO(b"")
        response = app(environ, start_response)
        for _chunk in response:
            pass
        response.close()
    return time.perf_counter() - start


class RoundTrips:
    """Counts commands sent on the wire by redis-py (a pipeline would count once)."""

    def __init__(self) -> None:
        self.count = 0
        self._original = redis.connection.AbstractConnection.send_packed_command

    def __enter__(self) -> RoundTrips:
        counter = self

        def counting(conn, command, check_health=True):
            counter.count += 1
            return counter._original(conn, command, check_health)

        redis.connection.AbstractConnection.send_packed_command = counting
        return self

    def __exit__(self, *exc) -> None:
        redis.connection.AbstractConnection.send_packed_command = self._original


def commandstats(client: redis.Redis) -> dict[str, int]:
    return {name: v["calls"] for name, v in client.info("commandstats").items()}


def measure(variants: dict) -> tuple[dict[str, list[float]], list[float]]:
    """Seconds per request of each variant in each round, and one bare EVALSHA per round.

    Interleaved rounds in a shuffled order; every ratio is later taken within one round
    (paired), then the median over rounds is printed, so slow drifts of a shared machine cancel.
    """
    timings: dict[str, list[float]] = {name: [] for name in variants}
    evalsha_rtt: list[float] = []
    floor = sync_script("default", FLOOR_SCRIPT)
    order = list(variants)
    shuffler = random.Random(7)
    for _ in range(ROUNDS):
        shuffler.shuffle(order)
        for name in order:
            app, path_info = variants[name]
            timings[name].append(run(app, path_info, REQUESTS) / REQUESTS)
        start = time.perf_counter()
        for _ in range(REQUESTS):
            floor(keys=["floor"], args=[])
        evalsha_rtt.append((time.perf_counter() - start) / REQUESTS)
    return timings, evalsha_rtt


def main() -> None:
    call_command("migrate", verbosity=0)
    limiter = get_rate_limiter()
    limiter.configure_endpoint(path="/red1/x", calls=HUGE, window_seconds=60, name="one")
    for i, window in enumerate((1, 60, 3600)):
        limiter.configure_endpoint(path="/red3/x", calls=HUGE, window_seconds=window, name=f"r{i}")
    limiter.configure_endpoint(path="/memo/x", calls=HUGE, window_seconds=60, name="memory")

    ours = "resilience.middleware.RateLimitMiddleware"
    variants = {
        "bare": (handler([]), "/bare/x"),
        "empty middleware": (handler([f"{__name__}.EmptyMiddleware"]), "/bare/x"),
        "memory 1 rule": (handler([f"{__name__}.MemoryRateLimitMiddleware"]), "/memo/x"),
        "redis 1 rule": (handler([ours]), "/red1/x"),
        "redis 3 rules": (handler([ours]), "/red3/x"),
        "evalsha floor": (handler([f"{__name__}.FloorMiddleware"]), "/eval/x"),
        "django-ratelimit": (handler([]), "/drl1/x"),
    }
    client = get_sync_client("default")
    stats_client = redis.Redis.from_url(REDIS_URL)

    # Warm up, then count round trips, commands and queries per request for each variant.
    per_request: dict[str, tuple[float, float, int]] = {}
    for name, (app, path_info) in variants.items():
        run(app, path_info, 200)
        n = 300
        before = commandstats(stats_client)
        with RoundTrips() as trips, CaptureQueriesContext(connection) as queries:
            run(app, path_info, n)
        after = commandstats(stats_client)
        commands = sum(after.get(k, 0) - before.get(k, 0) for k in after) - 1  # minus INFO
        per_request[name] = (trips.count / n, commands / n, len(queries))

    timings, evalsha_rtt = measure(variants)

    def paired(name: str, against: str, minus: str | None = None) -> float:
        """Median over rounds of (name - minus) / (against - minus), or name / against."""
        ratios = []
        for i in range(ROUNDS):
            base = timings[minus][i] if minus else 0.0
            ratios.append((timings[name][i] - base) / (timings[against][i] - base))
        return statistics.median(ratios)

    median = {name: statistics.median(values) for name, values in timings.items()}
    bare = median["bare"]
    print(f"Redis: {REDIS_URL} ({'private server' if REDIS_PROCESS else 'shared server'})")
    print(
        f"{ROUNDS} interleaved rounds x {REQUESTS} requests per variant; medians, ratios paired "
        "within each round.\n"
    )
    header = (
        f"{'variant':<18}{'req/s':>9}{'us/req':>9}{'x bare':>8}{'x d-rl':>8}{'added us':>10}"
        f"{'/floor':>8}{'RTT/req':>9}{'cmds/req':>10}{'DB q':>6}"
    )
    print(header)
    print("-" * len(header))
    for name in variants:
        cost = median[name]
        ratio_floor = (
            f"{paired(name, 'evalsha floor', 'bare'):8.2f}" if name != "bare" else f"{'':>8}"
        )
        trips, commands, queries = per_request[name]
        print(
            f"{name:<18}{1 / cost:9.0f}{cost * 1e6:9.1f}{paired('bare', name):8.2f}"
            f"{paired('django-ratelimit', name):8.2f}{(cost - bare) * 1e6:10.1f}{ratio_floor}"
            f"{trips:9.2f}{commands:10.2f}{queries:6d}"
        )
    rtt = statistics.median(evalsha_rtt)
    print(f"\nOne bare EVALSHA round trip (same client, same run): {rtt * 1e6:.1f} us")
    redis1 = paired("redis 1 rule", "evalsha floor", "bare")
    redis3 = paired("redis 3 rules", "evalsha floor", "bare")
    memory_share = paired("memory 1 rule", "bare") - 1
    print("\nTargets:")
    for label, ok, detail in (
        (
            "redis 1 rule added cost <= 1.3x floor",
            redis1 <= 1.3,
            f"{redis1:.2f}x",
        ),
        (
            "redis 3 rules added cost <= 1.3x floor",
            redis3 <= 1.3,
            f"{redis3:.2f}x",
        ),
        (
            "memory added cost < 10% of a bare request",
            memory_share < 0.10,
            f"{memory_share:.1%}",
        ),
        (
            "one round trip per request, whatever the rules",
            all(per_request[v][0] <= 1.01 for v in ("redis 1 rule", "redis 3 rules")),
            f"{per_request['redis 1 rule'][0]:.2f} / {per_request['redis 3 rules'][0]:.2f}",
        ),
        (
            "zero database queries",
            all(per_request[v][2] == 0 for v in variants),
            str(sum(per_request[v][2] for v in variants)),
        ),
    ):
        print(f"  [{'ok' if ok else 'MISSED'}] {label}: {detail}")
    empty_share = paired("empty middleware", "bare") - 1
    print(f"\nFor scale: an empty middleware adds {empty_share:.1%} of a bare request.")
    client.close()


if __name__ == "__main__":
    try:
        main()
    finally:
        if REDIS_PROCESS is not None:
            REDIS_PROCESS.terminate()
            REDIS_PROCESS.wait(timeout=10)
