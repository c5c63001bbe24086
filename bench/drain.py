"""Benchmark: draining buffered receipts, and emitting on a healthy MemoryGate.

    python bench/drain.py [--receipts 5000] [--concurrency 16] [--batch-size 500] [--rounds 3]
                          [--latency-ms 20] [--serial-receipts 150]
                          [--emit-rounds 12] [--emits-per-round 25]

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

Targets (DESIGN.md): drain >= 80% of plain, >= 5x serial. The contenders run ``--rounds`` times,
interleaved (each leads one round in turn); medians are printed, and each ratio is the median of
ratios taken within one round, because this machine is shared. The stub is reset before every
run so each stores N fresh receipts.

Then ``emit_receipt`` against a raw httpx POST, one at a time on a healthy stub, taking turns in
rounds (paired ratios again), and the number of database writes emitting made (target: none).

The database is an SQLite file in a temporary directory unless ``DATABASE_URL`` is set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
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


def run_emit(
    url: str, api_key: str, rounds: int, per_round: int
) -> tuple[list[float], list[float], int]:
    """Seconds per emit and per raw POST in each round, and database writes made by the emits.

    Both clients stay open for the whole run and take turns in rounds (the order flipped every
    round), so machine noise hits both alike and each round gives one paired ratio.
    """
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

    async def main() -> tuple[list[float], list[float]]:
        async with httpx.AsyncClient(timeout=5, trust_env=False) as http:

            async def emits() -> float:
                started = time.perf_counter()
                for _ in range(per_round):
                    result = await client.emit_receipt(**fields)
                    assert result["status"] == "delivered", result
                return (time.perf_counter() - started) / per_round

            async def raws() -> float:
                # Built beforehand: the raw loop is the floor, it only posts.
                receipts = [build_receipt(**fields) for _ in range(per_round)]
                started = time.perf_counter()
                for receipt in receipts:
                    response = await http.post(
                        url + "/v1/receipts",
                        content=receipt.wire_bytes,
                        headers=headers(api_key, str(receipt.receipt_id)),
                    )
                    assert response.status_code == 201, response.status_code
                return (time.perf_counter() - started) / per_round

            await client.emit_receipt(**fields)  # warm both pools
            await raws()
            emit_times: list[float] = []
            raw_times: list[float] = []
            for i in range(rounds):
                if i % 2:
                    raw_times.append(await raws())
                    emit_times.append(await emits())
                else:
                    emit_times.append(await emits())
                    raw_times.append(await raws())
        await client.aclose()
        return emit_times, raw_times

    # The raw loop touches no database: every write captured here is an emit's.
    with CaptureQueriesContext(connection) as queries:
        emit_times, raw_times = asyncio.run(main())
    writes = sum(1 for q in queries if not q["sql"].lstrip().upper().startswith("SELECT"))
    return emit_times, raw_times, writes


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be zero or more, not {text!r}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--receipts", type=positive_int, default=5000)
    parser.add_argument("--concurrency", type=positive_int, default=16)
    parser.add_argument("--batch-size", type=positive_int, default=500)
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--emit-rounds", type=positive_int, default=12)
    parser.add_argument("--emits-per-round", type=positive_int, default=25)
    parser.add_argument("--latency-ms", type=non_negative_float, default=20)
    parser.add_argument("--serial-receipts", type=positive_int, default=150)
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
                rates: dict[str, list[float]] = {name: [] for name in contenders}
                order = list(contenders)
                for _ in range(args.rounds):
                    for name in order:
                        stub.reset()
                        stub.set_faults(latency_ms=args.latency_ms)
                        rate = contenders[name]()
                        expected = len(serial_bodies) if name == "serial" else len(bodies)
                        assert stub.stats()["stored"] == expected
                        rates[name].append(rate)
                    order.append(order.pop(0))  # each contender leads one round in turn
                stub.reset()
                emit_times, raw_times, writes = run_emit(
                    stub.url, "bench-key", args.emit_rounds, args.emits_per_round
                )

    def paired(a: list[float], b: list[float]) -> float:
        return statistics.median(x / y for x, y in zip(a, b, strict=True))

    vendor = os.environ["DATABASE_URL"].split(":", 1)[0]
    print(
        f"drain {args.receipts} receipts, concurrency {args.concurrency}, batch "
        f"{args.batch_size}, stub latency {args.latency_ms:g} ms, {vendor}, "
        f"{args.rounds} interleaved rounds (medians; ratios paired within a round):"
    )
    for name, values in rates.items():
        print(f"  {name:<7} {statistics.median(values):8.0f} receipts/s")
    plain_ratio = paired(rates["drain"], rates["plain"])
    serial_ratio = paired(rates["drain"], rates["serial"])
    print(f"  drain / plain concurrent httpx: {plain_ratio:.2f}  (target >= 0.80)")
    print(f"  drain / one-at-a-time:          {serial_ratio:.2f}  (target >= 5)")
    print(
        f"emit_receipt on a healthy MemoryGate (no latency), one at a time, {args.emit_rounds} "
        f"rounds of {args.emits_per_round} taking turns with a raw httpx POST:"
    )
    print(f"  emit_receipt {statistics.median(emit_times) * 1e6:8.0f} us/call")
    print(f"  raw httpx    {statistics.median(raw_times) * 1e6:8.0f} us/call")
    print(f"  emit / raw: {paired(emit_times, raw_times):.2f}  (paired median)")
    print(f"  database writes while emitting: {writes} (target 0)")


if __name__ == "__main__":
    main()
