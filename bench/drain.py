"""Benchmark: draining buffered receipts, and emitting on a healthy MemoryGate.

    python bench/drain.py [--receipts 5000] [--concurrency 16] [--batch-size 500] [--rounds 2]
                          [--latency-ms 20] [--serial-receipts 200]

One run, one stub MemoryGate (a child process on loopback) answering after ``--latency-ms`` (a
MemoryGate is a networked service that writes to its own store; on a zero-latency loopback
nothing gains from concurrency), the same receipts for every contender:

* drain      ``receipts.drain`` over N buffered rows: claim, send, settle, in batches.
* plain      the floor: one ``httpx.AsyncClient`` posting the same N bodies with the same
             concurrency and headers, and nothing else (no database, no breaker).
* serial     one ``httpx.Client`` posting the first ``--serial-receipts`` of them one at a time
             (all N would take minutes; its rate does not depend on N).

Concurrency 16: httpx's async pool slows down past a few dozen connections on this machine (both
drain and plain use it, so the comparison stays fair; 16 is near the best of both).

Targets (DESIGN.md): drain >= 80% of plain, >= 5x serial. Each contender runs ``--rounds`` times,
interleaved, and its best round counts, because this machine is shared. The stub is reset before
every round so each one stores N fresh receipts.

Then ``emit_receipt`` against a raw httpx POST, one at a time on a healthy stub, and the number of
database writes emitting made (target: none).

The database is an SQLite file in a temporary directory unless ``DATABASE_URL`` is set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup_django(tmp: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "asyncgate_site.settings")
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{tmp}/bench.sqlite3")
    os.environ.setdefault("RESILIENCE_LOG_LEVEL", "ERROR")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def payloads(n: int) -> list[dict]:
    tenant = str(uuid.uuid4())
    now = datetime.now(UTC).isoformat()
    return [
        {
            "receipt_id": str(uuid.uuid4()),
            "tenant_id": tenant,
            "receipt_type": "task.completed",
            "from": {"kind": "worker", "id": f"worker-{i % 7}"},
            "to": {"kind": "service", "id": "asyncgate"},
            "task_id": str(uuid.uuid4()),
            "body": {"result": "ok", "i": i, "tags": ["bench", "drain"]},
            "created_at": now,
        }
        for i in range(n)
    ]


def headers(api_key: str, receipt_id: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Idempotency-Key": receipt_id,
        "Authorization": f"Bearer {api_key}",
    }


def run_plain(url: str, api_key: str, bodies: list[dict], concurrency: int) -> float:
    import httpx

    async def main() -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(timeout=5, limits=limits, trust_env=False) as client:
            work = iter(bodies)

            async def worker() -> None:
                for body in work:
                    content = json.dumps(body, separators=(",", ":")).encode()
                    response = await client.post(
                        url, content=content, headers=headers(api_key, body["receipt_id"])
                    )
                    assert response.status_code == 201, response.status_code

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    started = time.perf_counter()
    asyncio.run(main())
    return len(bodies) / (time.perf_counter() - started)


def run_serial(url: str, api_key: str, bodies: list[dict]) -> float:
    import httpx

    started = time.perf_counter()
    with httpx.Client(timeout=5, trust_env=False) as client:
        for body in bodies:
            content = json.dumps(body, separators=(",", ":")).encode()
            response = client.post(
                url, content=content, headers=headers(api_key, body["receipt_id"])
            )
            assert response.status_code == 201, response.status_code
    return len(bodies) / (time.perf_counter() - started)


def run_drain(bodies: list[dict], concurrency: int, batch_size: int) -> float:
    from resilience.models import BufferedReceipt
    from resilience.receipts.drain import DrainOptions, drain

    BufferedReceipt.objects.all().delete()
    BufferedReceipt.objects.bulk_create(
        [
            BufferedReceipt(
                receipt_id=b["receipt_id"],
                tenant_id=b["tenant_id"],
                receipt_type=b["receipt_type"],
                task_id=b["task_id"],
                payload=b,
            )
            for b in bodies
        ],
        batch_size=1000,
    )
    report = drain(DrainOptions(batch_size=batch_size, concurrency=concurrency))
    assert report.delivered == len(bodies) and report.all_delivered, report
    return report.delivered / report.elapsed


def run_emit(url: str, api_key: str, n: int) -> tuple[float, float, int]:
    """Seconds per emit, seconds per raw POST, and database writes made by the emits."""
    import httpx
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from resilience.breaker import get_breaker
    from resilience.integrations import MemoryGateClient
    from resilience.receipts.schema import build_receipt

    client = MemoryGateClient(url, api_key, timeout=5)
    get_breaker("memorygate")
    fields = {
        "tenant_id": uuid.uuid4(),
        "receipt_type": "task.started",
        "from_principal": {"kind": "worker", "id": "w-1"},
        "to_principal": {"kind": "service", "id": "asyncgate"},
        "body": {"progress": 0},
    }

    async def emits() -> float:
        await client.emit_receipt(**fields)  # warm the pool
        started = time.perf_counter()
        for _ in range(n):
            result = await client.emit_receipt(**fields)
            assert result["status"] == "delivered", result
        elapsed = time.perf_counter() - started
        await client.aclose()
        return elapsed / n

    async def raw() -> float:
        receipts = [build_receipt(**fields) for _ in range(n + 1)]
        async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
            started = 0.0
            for i, receipt in enumerate(receipts):
                if i == 1:
                    started = time.perf_counter()
                receipt_id = str(receipt.receipt_id)
                response = await http.post(
                    url + "/v1/receipts",
                    content=receipt.wire_bytes,
                    headers=headers(api_key, receipt_id),
                )
                assert response.status_code == 201
            return (time.perf_counter() - started) / n

    with CaptureQueriesContext(connection) as queries:
        per_emit = asyncio.run(emits())
    writes = sum(1 for q in queries if not q["sql"].lstrip().upper().startswith("SELECT"))
    per_raw = asyncio.run(raw())
    return per_emit, per_raw, writes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--receipts", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--emits", type=int, default=300)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--serial-receipts", type=int, default=150)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp:
        setup_django(tmp)
        from django.conf import settings
        from django.test.utils import override_settings

        from resilience.testing.stub_process import StubMemoryGate

        with StubMemoryGate.start(api_key="bench-key") as stub:
            resilience = {
                **settings.RESILIENCE,
                "MEMORYGATE_URL": stub.url,
                "MEMORYGATE_API_KEY": "bench-key",
                "MEMORYGATE_TIMEOUT_SECONDS": 5,
            }
            with override_settings(RESILIENCE=resilience):
                bodies = payloads(args.receipts)
                url = stub.url + "/v1/receipts"
                serial_bodies = bodies[: args.serial_receipts]
                contenders = {
                    "drain": lambda: run_drain(bodies, args.concurrency, args.batch_size),
                    "plain": lambda: run_plain(url, "bench-key", bodies, args.concurrency),
                    "serial": lambda: run_serial(url, "bench-key", serial_bodies),
                }
                best = dict.fromkeys(contenders, 0.0)
                for _ in range(args.rounds):
                    for name, contender in contenders.items():
                        stub.reset()
                        stub.set_faults(latency_ms=args.latency_ms)
                        rate = contender()
                        expected = len(serial_bodies) if name == "serial" else len(bodies)
                        assert stub.stats()["stored"] == expected
                        best[name] = max(best[name], rate)
                stub.reset()
                per_emit, per_raw, writes = run_emit(stub.url, "bench-key", args.emits)

    vendor = os.environ["DATABASE_URL"].split(":", 1)[0]
    print(
        f"drain {args.receipts} receipts, concurrency {args.concurrency}, batch "
        f"{args.batch_size}, stub latency {args.latency_ms:g} ms, {vendor}, best of {args.rounds}:"
    )
    for name, rate in best.items():
        print(f"  {name:<7} {rate:8.0f} receipts/s")
    plain_ratio = best["drain"] / best["plain"]
    serial_ratio = best["drain"] / best["serial"]
    print(f"  drain / plain concurrent httpx: {plain_ratio:.2f}  (target >= 0.80)")
    print(f"  drain / one-at-a-time:          {serial_ratio:.2f}  (target >= 5)")
    print(f"emit_receipt on a healthy MemoryGate (no latency), {args.emits} one at a time:")
    print(f"  emit_receipt {per_emit * 1e6:8.0f} us/call")
    print(f"  raw httpx    {per_raw * 1e6:8.0f} us/call")
    print(f"  emit / raw: {per_emit / per_raw:.2f}")
    print(f"  database writes while emitting: {writes} (target 0)")


if __name__ == "__main__":
    main()
