"""``manage.py drain_receipts``: options, exit codes, output; and drainers as real processes."""

import io
import signal
import time
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from resilience.models import BufferedReceipt, ReceiptStatus
from tests.conftest import point_at
from tests.receipts.conftest import manage, wait_for

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("drain_receipts", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_drain_receipts__delivers_and_summarizes(memorygate, buffered):
    buffered(5)

    output = run("--batch-size", "2")

    assert "delivered 5" in output
    assert memorygate.stats()["stored"] == 5
    assert "\r[" not in output  # not a terminal: no progress bar


def test_drain_receipts__quiet_under_verbosity_0(memorygate, buffered):
    buffered(2)

    assert run("-v", "0") == ""
    assert memorygate.stats()["stored"] == 2


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--concurrency", "-3"], "--concurrency"),
        (["--max-attempts", "many"], "--max-attempts"),
        (["--lease-seconds", "nan"], "--lease-seconds"),
        (["--max-seconds", "0"], "--max-seconds"),
        (["--purge-delivered-older-than", "7 weeks"], "--purge-delivered-older-than"),
        (["--purge-delivered-older-than", "0d"], "--purge-delivered-older-than"),
        (["--purge-delivered-older-than", "99999999999d"], "--purge-delivered-older-than"),
        (["--purge-delivered-older-than", "999999999d"], "--purge-delivered-older-than"),
        (["--purge-delivered-older-than", "3651d"], "--purge-delivered-older-than"),
        (["--purge-delivered-older-than", "9" * 5000 + "s"], "--purge-delivered-older-than"),
        (["--lease-seconds", "1e12"], "--lease-seconds"),
        (["--lease-seconds", "86401"], "--lease-seconds"),
        (["--batch-size", "10001"], "--batch-size"),
        (["--batch-size", "9" * 5000], "--batch-size"),
        (["--concurrency", "1001"], "--concurrency"),
        (["--max-attempts", "1001"], "--max-attempts"),
        (["--max-seconds", "1e300"], "--max-seconds"),
    ],
)
def test_drain_receipts__bad_option_is_exit_2_and_changes_nothing(
    memorygate, buffered, args, option
):
    buffered(2, status=ReceiptStatus.DEAD)
    buffered(2)

    with pytest.raises(CommandError, match=option) as error:
        run("--requeue-dead", *args)

    assert error.value.returncode == 2
    assert BufferedReceipt.objects.filter(status=ReceiptStatus.DEAD).count() == 2
    assert memorygate.stats()["received"] == 0


def test_drain_receipts__the_largest_allowed_values_work(memorygate, buffered):
    buffered(1, status=ReceiptStatus.DEAD)
    delivered_long_ago = timezone.now() - timedelta(days=3650, hours=1)
    buffered(1, status=ReceiptStatus.DELIVERED, delivered_at=delivered_long_ago)

    output = run(
        "--requeue-dead", "--purge-delivered-older-than", "3650d", "--lease-seconds", "86400",
        "--batch-size", "10000", "--concurrency", "1000", "--max-attempts", "1000",
        "--max-seconds", "315360000",
    )  # fmt: skip

    assert "Requeued 1" in output and "Purged 1" in output
    assert memorygate.stats()["stored"] == 1


def test_drain_receipts__unset_url_is_exit_2(settings, buffered):
    point_at(settings, None)
    buffered(1, status=ReceiptStatus.DEAD)

    with pytest.raises(CommandError, match="MEMORYGATE_URL") as error:
        run("--requeue-dead")

    assert error.value.returncode == 2
    assert BufferedReceipt.objects.get().status == ReceiptStatus.DEAD


def test_drain_receipts__still_failing_is_exit_1(memorygate, buffered):
    buffered(2)
    memorygate.set_faults(fail_rate=1.0)

    with pytest.raises(CommandError, match="2 receipt") as error:
        run()

    assert error.value.returncode == 1


def test_drain_receipts__dry_run_changes_and_sends_nothing(memorygate, buffered):
    buffered(3)
    buffered(2, status=ReceiptStatus.DEAD)
    long_ago = timezone.now() - timedelta(days=10)
    buffered(4, status=ReceiptStatus.DELIVERED, delivered_at=long_ago)

    output = run("--dry-run", "--requeue-dead", "--purge-delivered-older-than", "7d")

    assert "Due now: 3" in output
    assert "Would requeue 2" in output
    assert "Would purge 4" in output
    assert memorygate.stats()["received"] == 0
    assert BufferedReceipt.objects.count() == 9


def test_drain_receipts__requeue_dead_and_purge_delivered(memorygate, buffered):
    buffered(2, status=ReceiptStatus.DEAD, attempts=12)
    buffered(3, status=ReceiptStatus.DELIVERED, delivered_at=timezone.now() - timedelta(hours=13))
    buffered(1, status=ReceiptStatus.DELIVERED, delivered_at=timezone.now())

    output = run("--requeue-dead", "--purge-delivered-older-than", "12h")

    assert "Requeued 2" in output and "Purged 3" in output
    assert BufferedReceipt.objects.filter(status=ReceiptStatus.DELIVERED).count() == 3
    assert memorygate.stats()["stored"] == 2


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_drain_receipts__progress_bar_on_a_terminal(memorygate, buffered):
    buffered(6)
    out = Terminal()

    call_command("drain_receipts", "--batch-size", "3", stdout=out)

    bars = [line for line in out.getvalue().split("\r") if line.startswith("[")]
    assert len(bars) == 2
    assert bars[-1].startswith("[" + "#" * 30 + "] 6/6 delivered 6")


def test_drain_receipts__help_documents_every_option():
    from resilience.management.commands.drain_receipts import Command

    text = Command().create_parser("manage.py", "drain_receipts").format_help()

    for option in (
        "--batch-size", "--concurrency", "--max-attempts", "--lease-seconds", "--loop",
        "--max-seconds", "--dry-run", "--requeue-dead", "--purge-delivered-older-than",
    ):  # fmt: skip
        assert option in text


# Real processes. Each drainer is `manage.py drain_receipts` with the test database (child_env).


def _pending(n: int, buffered) -> set[str]:
    return {str(r.receipt_id) for r in buffered(n)}


@pytest.mark.slow
def test_drain_receipts__concurrent_drainers_send_each_receipt_once(
    memorygate_env, stub_memorygate, buffered
):
    ids = _pending(600, buffered)
    stub_memorygate.set_faults(latency_ms=15)

    drainers = [
        manage(memorygate_env, "drain_receipts", "--batch-size", "20", "--concurrency", "4")
        for _ in range(3)
    ]
    outputs = [d.communicate(timeout=120) for d in drainers]

    assert [d.returncode for d in drainers] == [0, 0, 0], outputs
    claimed = [int(out.split("Claimed ")[1].split()[0]) for out, _ in outputs]
    assert sum(claimed) == 600
    assert sum(1 for n in claimed if n) >= 2, claimed  # they really ran side by side
    stats = stub_memorygate.stats()
    assert (stats["stored"], stats["duplicates"], stats["received"]) == (600, 0, 600)
    assert set(stub_memorygate.receipts()) == ids
    assert BufferedReceipt.objects.filter(status=ReceiptStatus.DELIVERED).count() == 600


@pytest.mark.slow
def test_drain_receipts__killed_drainer_loses_nothing(memorygate_env, stub_memorygate, buffered):
    ids = _pending(120, buffered)
    stub_memorygate.set_faults(latency_ms=150)
    victim = manage(
        memorygate_env, "drain_receipts", "--batch-size", "60", "--concurrency", "3",
        "--lease-seconds", "2",
    )  # fmt: skip
    wait_for(lambda: stub_memorygate.stats()["received"] >= 4)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=10)
    assert BufferedReceipt.objects.filter(status=ReceiptStatus.IN_FLIGHT).exists()
    stub_memorygate.set_faults(latency_ms=0)

    time.sleep(2.1)  # the victim's lease runs out
    survivor = manage(memorygate_env, "drain_receipts")
    out, err = survivor.communicate(timeout=60)

    assert survivor.returncode == 0, (out, err)
    assert set(stub_memorygate.receipts()) == ids
    assert BufferedReceipt.objects.filter(status=ReceiptStatus.DELIVERED).count() == 120


@pytest.mark.slow
def test_drain_receipts__one_shot_run_stopped_by_sigterm_is_exit_1(
    memorygate_env, stub_memorygate, buffered
):
    _pending(200, buffered)
    stub_memorygate.set_faults(latency_ms=100)
    drainer = manage(memorygate_env, "drain_receipts", "--batch-size", "100", "--concurrency", "2")
    wait_for(lambda: stub_memorygate.stats()["received"] >= 2)

    drainer.send_signal(signal.SIGTERM)
    out, err = drainer.communicate(timeout=20)

    assert drainer.returncode == 1, (out, err)
    assert "stop requested" in out
    assert "still due (stopped before the end)" in err
    assert BufferedReceipt.objects.filter(status=ReceiptStatus.IN_FLIGHT).count() == 0
    assert BufferedReceipt.objects.filter(status=ReceiptStatus.PENDING).exists()


@pytest.mark.slow
def test_drain_receipts__loop_exits_cleanly_on_sigterm_releasing_its_rows(
    memorygate_env, stub_memorygate, buffered
):
    _pending(200, buffered)
    stub_memorygate.set_faults(latency_ms=100)
    worker = manage(
        memorygate_env, "drain_receipts", "--loop", "--batch-size", "100", "--concurrency", "2",
    )  # fmt: skip
    wait_for(lambda: stub_memorygate.stats()["received"] >= 2)

    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=20)

    assert worker.returncode == 0, (out, err)
    assert "stop requested" in out
    assert BufferedReceipt.objects.filter(status=ReceiptStatus.IN_FLIGHT).count() == 0
    delivered = BufferedReceipt.objects.filter(status=ReceiptStatus.DELIVERED).count()
    assert delivered == stub_memorygate.stats()["stored"] < 200
