"""A worker process for the multi-process tests: Django's full request handler, real settings.

    python -m tests.ratelimit.worker fire <path> <requests>
        prints "ready", waits for a line on stdin, fires the requests, prints one JSON summary.
    python -m tests.ratelimit.worker watch <path> <limit> <seconds>
        prints "ready", waits for a line on stdin, then requests <path> every 20 ms and prints
        "<wall time> <X-RateLimit-Limit>" per request until that header equals <limit> (or the
        time is up).

The environment comes from the ``child_env`` fixture plus the rate-limit switches.
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> int:
    import django

    django.setup()
    from django.test import Client
    from django.test.utils import setup_test_environment

    setup_test_environment()
    client = Client()
    client.get("/no-such-path-warms-the-handler")
    mode, path = argv[0], argv[1]
    print("ready", flush=True)
    sys.stdin.readline()
    if mode == "fire":
        statuses: dict[int, int] = {}
        for _ in range(int(argv[2])):
            status = client.get(path).status_code
            statuses[status] = statuses.get(status, 0) + 1
        print(json.dumps(statuses), flush=True)
        return 0
    target, deadline = argv[2], time.time() + float(argv[3])
    while time.time() < deadline:
        limit = client.get(path).headers.get("X-RateLimit-Limit", "-")
        print(f"{time.time():.3f} {limit}", flush=True)
        if limit == target:
            return 0
        time.sleep(0.02)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
