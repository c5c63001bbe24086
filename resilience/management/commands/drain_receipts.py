"""``manage.py drain_receipts``: deliver buffered receipts to MemoryGate (see ``receipts.drain``).

Exit status: 0 when every due receipt was delivered (or a ``--loop`` worker was asked to stop),
1 when some are still failing (retried later, dead-lettered, or held back by an open circuit) or
a one-shot run was stopped with receipts still due, 2 on misconfiguration (``MEMORYGATE_URL``
unset, an invalid option); nothing changes then. Every option is checked, and every time derived
from one (the purge cutoff, a lease's expiry) computed, before ``--requeue-dead`` or
``--purge-delivered-older-than`` touch a row.
"""

from __future__ import annotations

import math
import re
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count
from django.utils import timezone

from resilience.exceptions import DeliveryError
from resilience.models import BufferedReceipt, ReceiptStatus
from resilience.receipts import buffer
from resilience.receipts.drain import (
    MAX_OPTION_VALUES,
    STOP_REQUESTED,
    DrainOptions,
    DrainReport,
    drain,
)
from resilience.receipts.transport import transport_from_settings

EXIT_STILL_FAILING = 1
EXIT_MISCONFIGURED = 2
# At most 12 digits: more is over MAX_DURATION in any unit (and int() refuses thousands).
DURATION = re.compile(r"^\s*(\d{1,12})\s*([dhms])\s*$")
DURATION_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
MAX_DURATION = timedelta(days=3650)
BAR_WIDTH = 30
DEFAULTS = DrainOptions()


def parse_duration(value: str, option: str) -> timedelta:
    """``7d``, ``12h``, ``30m`` or ``45s`` as a timedelta of at most ``MAX_DURATION``;
    ``CommandError`` (exit 2) otherwise."""
    match = DURATION.match(value or "")
    if match is None or int(match.group(1)) <= 0:
        raise CommandError(
            f"{option}: {value!r} is not a duration; use a positive number with d, h, m or s "
            "(e.g. 7d, 12h, 30m).",
            returncode=EXIT_MISCONFIGURED,
        )
    seconds = int(match.group(1)) * DURATION_UNIT_SECONDS[match.group(2)]
    if seconds > MAX_DURATION.total_seconds():
        raise CommandError(
            f"{option}: {value!r} is longer than the limit of {MAX_DURATION.days} days.",
            returncode=EXIT_MISCONFIGURED,
        )
    return timedelta(seconds=seconds)


def parse_positive(value: str, option: str, kind: Callable[[str], float] = int) -> Any:
    """A positive ``kind`` of at most the bound ``receipts.drain`` sets for the option."""
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number) or number <= 0:
        noun = "integer" if kind is int else "number"
        raise CommandError(
            f"{option}: {value!r} is not a positive {noun}.", returncode=EXIT_MISCONFIGURED
        )
    limit = MAX_OPTION_VALUES[option.removeprefix("--").replace("-", "_")]
    if number > limit:
        raise CommandError(
            f"{option}: {value!r} is over the limit of {limit:.0f}.", returncode=EXIT_MISCONFIGURED
        )
    return number


def _valid_date(option: str, compute: Callable[[], datetime]) -> datetime:
    try:
        return compute()
    except OverflowError:
        raise CommandError(
            f"{option}: the date it leads to is out of range.", returncode=EXIT_MISCONFIGURED
        ) from None


@dataclass(frozen=True)
class Plan:
    """A validated invocation: the drain's options, and the purge cutoff when purging."""

    drain_options: DrainOptions
    purge_before: datetime | None


class Command(BaseCommand):
    help = (
        "Deliver buffered receipts to MemoryGate: claim due rows in batches under a lease, send "
        "them concurrently, write results back. Exit 0: all due delivered; 1: some still "
        "failing; 2: misconfiguration."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size",
            default=str(DEFAULTS.batch_size),
            help=f"Rows claimed per batch (default {DEFAULTS.batch_size}, "
            f"at most {MAX_OPTION_VALUES['batch_size']:.0f}).",
        )
        parser.add_argument(
            "--concurrency",
            default=str(DEFAULTS.concurrency),
            help=f"Requests in flight at once (default {DEFAULTS.concurrency}, "
            f"at most {MAX_OPTION_VALUES['concurrency']:.0f}).",
        )
        parser.add_argument(
            "--max-attempts",
            default=str(DEFAULTS.max_attempts),
            help="Attempts before a receipt is dead-lettered; breaker rejections do not count "
            f"(default {DEFAULTS.max_attempts}, at most {MAX_OPTION_VALUES['max_attempts']:.0f}).",
        )
        parser.add_argument(
            "--lease-seconds",
            default=str(DEFAULTS.lease_seconds),
            help="How long a claim holds its rows; a drainer that dies loses them to others "
            f"after this (default {DEFAULTS.lease_seconds:g}, "
            f"at most {MAX_OPTION_VALUES['lease_seconds']:.0f}).",
        )
        parser.add_argument(
            "--loop",
            action="store_true",
            help="Keep running as a worker, polling for due receipts, until SIGTERM or SIGINT.",
        )
        parser.add_argument(
            "--max-seconds",
            default=None,
            help="Stop claiming new batches after this many seconds (default: no limit; "
            f"at most {MAX_OPTION_VALUES['max_seconds']:.0f}).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Report what would be done (due, dead, purgeable rows) and change nothing.",
        )
        parser.add_argument(
            "--requeue-dead",
            action="store_true",
            help="First make every dead receipt pending again, due now, with fresh attempts.",
        )
        parser.add_argument(
            "--purge-delivered-older-than",
            metavar="DURATION",
            default=None,
            help="First delete delivered rows older than DURATION (e.g. 7d, 12h, 30m; "
            f"at most {MAX_DURATION.days}d).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        plan = self._validated(options)
        try:
            transport = transport_from_settings()
        except DeliveryError as exc:
            raise CommandError(str(exc), returncode=EXIT_MISCONFIGURED) from exc
        verbosity = options["verbosity"]

        if options["dry_run"]:
            self._dry_run(options["requeue_dead"], plan.purge_before)
            return
        if options["requeue_dead"]:
            count = buffer.requeue_dead()
            self._say(verbosity, f"Requeued {count} dead receipt(s).")
        if plan.purge_before is not None:
            count = buffer.purge_delivered_before(plan.purge_before)
            self._say(verbosity, f"Purged {count} delivered receipt(s).")

        progress = None
        if verbosity >= 1 and _is_terminal(self.stdout):
            progress = ProgressBar(self.stdout, total=buffer.due_count())
        stop = threading.Event()
        with _stop_on_signals(stop):
            report = drain(
                plan.drain_options,
                transport=transport,
                stop=stop,
                on_progress=progress.update if progress else None,
            )
        if progress is not None:
            progress.finish()
        self._summarize(report, verbosity)
        # A worker asked to stop did its job; a one-shot run stopped early did not.
        stopped = report.stopped_because == STOP_REQUESTED
        if report.all_delivered or (stopped and plan.drain_options.loop):
            return
        raise CommandError(
            f"{report.still_failing} receipt(s) still failing (pending for a later attempt), "
            f"{report.dead} dead-lettered, {report.remaining_due} still due"
            + (" (stopped before the end)." if stopped else "."),
            returncode=EXIT_STILL_FAILING,
        )

    def _validated(self, options: dict[str, Any]) -> Plan:
        """Every option checked, and every time derived from one computed, or exit 2."""
        max_seconds = options["max_seconds"]
        purge = options["purge_delivered_older_than"]
        lease_seconds = parse_positive(options["lease_seconds"], "--lease-seconds", float)
        drain_options = DrainOptions(
            batch_size=parse_positive(options["batch_size"], "--batch-size"),
            concurrency=parse_positive(options["concurrency"], "--concurrency"),
            max_attempts=parse_positive(options["max_attempts"], "--max-attempts"),
            lease_seconds=lease_seconds,
            loop=options["loop"],
            max_seconds=(
                None if max_seconds is None else parse_positive(max_seconds, "--max-seconds", float)
            ),
        )
        purge_age = None if purge is None else parse_duration(purge, "--purge-delivered-older-than")
        # The bounds keep these dates valid; computing them here proves it before any row changes.
        now = timezone.now()
        _valid_date("--lease-seconds", lambda: now + timedelta(seconds=lease_seconds))
        purge_before = (
            None
            if purge_age is None
            else _valid_date("--purge-delivered-older-than", lambda: now - purge_age)
        )
        return Plan(drain_options, purge_before)

    def _dry_run(self, requeue_dead: bool, purge_before: datetime | None) -> None:
        by_status = dict.fromkeys(ReceiptStatus.values, 0)
        for status, count in _status_counts():
            by_status[status] = count
        self.stdout.write(f"Due now: {buffer.due_count()} receipt(s).")
        self.stdout.write(
            ", ".join(f"{ReceiptStatus(s).label}: {n}" for s, n in by_status.items()) + "."
        )
        if requeue_dead:
            self.stdout.write(f"Would requeue {by_status[ReceiptStatus.DEAD]} dead receipt(s).")
        if purge_before is not None:
            count = buffer.delivered_before(purge_before)
            self.stdout.write(f"Would purge {count} delivered receipt(s).")
        self.stdout.write("Dry run: nothing was changed or sent.")

    def _summarize(self, report: DrainReport, verbosity: int) -> None:
        if verbosity < 1:
            return
        style = self.style.SUCCESS if report.all_delivered else self.style.WARNING
        rate = report.delivered / report.elapsed if report.elapsed > 0 else 0.0
        self.stdout.write(
            style(
                f"Claimed {report.claimed} in {report.batches} batch(es): delivered "
                f"{report.delivered}, retry later {report.failed}, dead-lettered {report.dead}, "
                f"held by open circuit {report.skipped_open_circuit}, released "
                f"{report.released}. Still due: {report.remaining_due}. "
                f"{report.elapsed:.2f} s ({rate:.0f}/s); stopped: {report.stopped_because}."
            )
        )
        if verbosity >= 2 and report.lost_lease:
            self.stdout.write(
                self.style.WARNING(
                    f"{report.lost_lease} row(s) were re-claimed by another drainer."
                )
            )

    def _say(self, verbosity: int, message: str) -> None:
        if verbosity >= 1:
            self.stdout.write(message)


def _status_counts() -> list[tuple[str, int]]:
    return list(
        BufferedReceipt.objects.values("status")
        .annotate(n=Count("id"))
        .order_by()
        .values_list("status", "n")
    )


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(getattr(stream, "_out", stream), "isatty", None)
    return bool(isatty and isatty())


class ProgressBar:
    """``[#####-----] 120/500 delivered 100, retry 20`` redrawn in place; plain text."""

    def __init__(self, stdout: Any, total: int) -> None:
        self.stdout = stdout
        self.total = max(total, 1)

    def update(self, report: DrainReport) -> None:
        done = report.delivered + report.failed + report.dead
        self.total = max(self.total, report.claimed)
        filled = min(BAR_WIDTH, BAR_WIDTH * done // self.total)
        self.stdout.write(
            f"\r[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done}/{self.total} "
            f"delivered {report.delivered}, retry {report.failed}, dead {report.dead}",
            ending="",
        )
        self.stdout.flush()

    def finish(self) -> None:
        self.stdout.write("")


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop`` (the drain then finishes its batch and gives back the rest); a
    second SIGINT interrupts at once. Signals can only be handled in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def request_stop(signum: int, frame: Any) -> None:
        stop.set()
        signal.signal(signal.SIGINT, previous[signal.SIGINT])

    for sig in previous:
        signal.signal(sig, request_stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
