"""Prometheus metrics of the app (``prometheus-client``), exposed by ``resilience.views.metrics``.

Every name starts with ``resilience_``. Counters (``_total`` added by the client library):

``resilience_ratelimit_requests_total{rule, mode, result}``
    Requests each rule decided on; ``result`` is ``allowed`` or ``blocked`` (for a ``shadow``
    rule: "would have blocked"); ``rule`` is ``<source>:<name>`` (``db:create-task``).
``resilience_ratelimit_backend_unavailable_total{outcome}``
    Requests decided without the rate-limit backend (Redis unreachable); ``outcome`` is
    ``allowed`` (fail open) or ``refused`` (fail closed).
``resilience_breaker_transitions_total{policy, state}``
    Transitions into ``state`` (``open``, ``half_open``, ``closed``), counted once for the fleet
    by the process that caused each one.
``resilience_receipts_emitted_total{outcome}``
    ``emit_receipt`` answers: ``delivered``, ``buffered``, ``rejected``.
``resilience_receipts_delivered_total{path}``, ``resilience_receipts_buffered_total``,
``resilience_receipts_dead_lettered_total{path}``
    Deliveries (``path``: ``direct`` at emit, ``drain`` from the buffer), receipts written to the
    buffer, and receipts dead-lettered (``path``: ``emit``, refused at once; ``drain``).

Histogram: ``resilience_drain_batch_duration_seconds`` (claim to settled, per drain batch).

Gauges, set when the endpoint is scraped from the shared state (so any one process reports the
fleet's): ``resilience_breaker_state{policy, state}`` (1 for the current state, 0 for the others),
``resilience_breaker_state_since_timestamp_seconds{policy}``,
``resilience_breaker_consecutive_failures{policy}``, ``resilience_receipts_in_buffer{status}``
(rows per status) and ``resilience_receipts_oldest_pending_age_seconds``.

Request-path cost: none of its own. Rate-limit counts are tallied in process by
``resilience.ratelimit.stats`` and added here on its periodic flush (at most every 0.5 s per
process, and on every scrape of this process); breaker and receipt counters are signal receivers.

Multi-process servers (gunicorn, uWSGI): set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory
writable by every worker, the same for all of them, before they start (prometheus-client then
keeps each process's values in files there and the endpoint adds them up); gauges use the
``mostrecent`` mode, since every process reads the same shared state. See the README.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

from resilience import signals
from resilience.ratelimit import stats as rl_stats
from resilience.receipts.drain import Drainer

RATELIMIT_REQUESTS = Counter(
    "resilience_ratelimit_requests",
    "Requests a rate-limit rule decided on, by rule, mode and result (allowed or blocked).",
    ["rule", "mode", "result"],
)
RATELIMIT_UNAVAILABLE = Counter(
    "resilience_ratelimit_backend_unavailable",
    "Requests decided without the rate-limit backend (fail open: allowed; closed: refused).",
    ["outcome"],
)
BREAKER_TRANSITIONS = Counter(
    "resilience_breaker_transitions",
    "Circuit breaker transitions into a state, by policy.",
    ["policy", "state"],
)
BREAKER_STATE = Gauge(
    "resilience_breaker_state",
    "1 for the circuit's current state, 0 for the others (fleet-wide, read when scraped).",
    ["policy", "state"],
    multiprocess_mode="mostrecent",
)
BREAKER_STATE_SINCE = Gauge(
    "resilience_breaker_state_since_timestamp_seconds",
    "Unix time the circuit entered its current state.",
    ["policy"],
    multiprocess_mode="mostrecent",
)
BREAKER_FAILURES = Gauge(
    "resilience_breaker_consecutive_failures",
    "Consecutive failures counted towards opening the circuit.",
    ["policy"],
    multiprocess_mode="mostrecent",
)
RECEIPTS_EMITTED = Counter(
    "resilience_receipts_emitted",
    "emit_receipt answers, by outcome (delivered, buffered, rejected).",
    ["outcome"],
)
RECEIPTS_DELIVERED = Counter(
    "resilience_receipts_delivered",
    "Receipts MemoryGate stored, by path (direct at emit, drain from the buffer).",
    ["path"],
)
RECEIPTS_BUFFERED = Counter(
    "resilience_receipts_buffered", "Receipts written to the buffer for later delivery."
)
RECEIPTS_DEAD = Counter(
    "resilience_receipts_dead_lettered",
    "Receipts dead-lettered, by path (emit: refused at once; drain).",
    ["path"],
)
RECEIPTS_IN_BUFFER = Gauge(
    "resilience_receipts_in_buffer",
    "Buffered receipt rows by status (read from the database when scraped).",
    ["status"],
    multiprocess_mode="mostrecent",
)
RECEIPTS_OLDEST_PENDING = Gauge(
    "resilience_receipts_oldest_pending_age_seconds",
    "Age of the oldest receipt waiting in the buffer (0 when none is).",
    multiprocess_mode="mostrecent",
)
DRAIN_BATCH_SECONDS = Histogram(
    "resilience_drain_batch_duration_seconds",
    "Seconds from claiming a drain batch to having settled it.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

BREAKER_STATES = ("closed", "open", "half_open")


# Rate limits: added on each flush of the in-process tallies ------------------------------------


def _count_rate_limits(batch: rl_stats.Batch) -> None:
    for tally in batch.tallies:
        rid = rl_stats.rule_id(tally.rule)
        if tally.allowed:
            RATELIMIT_REQUESTS.labels(rid, tally.rule.mode, "allowed").inc(tally.allowed)
        if tally.blocked:
            RATELIMIT_REQUESTS.labels(rid, tally.rule.mode, "blocked").inc(tally.blocked)
    if batch.unavailable_allowed:
        RATELIMIT_UNAVAILABLE.labels("allowed").inc(batch.unavailable_allowed)
    if batch.unavailable_refused:
        RATELIMIT_UNAVAILABLE.labels("refused").inc(batch.unavailable_refused)


rl_stats.counts.add_listener(_count_rate_limits)


# Breakers and receipts: signal receivers -----------------------------------------------------


def _transition(*, name: str, state: str, **kwargs: Any) -> None:
    BREAKER_TRANSITIONS.labels(name, state).inc()


for _signal in (signals.circuit_opened, signals.circuit_half_opened, signals.circuit_closed):
    _signal.connect(_transition, dispatch_uid=f"resilience.metrics.{id(_signal)}")


def _delivered(sender: Any, *, buffered: bool = False, **kwargs: Any) -> None:
    if buffered:
        RECEIPTS_DELIVERED.labels("drain").inc()
    else:
        RECEIPTS_DELIVERED.labels("direct").inc()
        RECEIPTS_EMITTED.labels("delivered").inc()


def _buffered(sender: Any, **kwargs: Any) -> None:
    RECEIPTS_BUFFERED.inc()
    RECEIPTS_EMITTED.labels("buffered").inc()


def _dead_lettered(sender: Any, **kwargs: Any) -> None:
    if sender is Drainer:
        RECEIPTS_DEAD.labels("drain").inc()
    else:
        RECEIPTS_DEAD.labels("emit").inc()
        RECEIPTS_EMITTED.labels("rejected").inc()


def _batch_drained(sender: Any, *, duration: float, **kwargs: Any) -> None:
    DRAIN_BATCH_SECONDS.observe(duration)


signals.receipt_delivered.connect(_delivered, dispatch_uid="resilience.metrics.delivered")
signals.receipt_buffered.connect(_buffered, dispatch_uid="resilience.metrics.buffered")
signals.receipt_dead_lettered.connect(_dead_lettered, dispatch_uid="resilience.metrics.dead")
signals.receipt_batch_drained.connect(_batch_drained, dispatch_uid="resilience.metrics.batch")


# Scrape time ----------------------------------------------------------------------------------


def refresh_gauges() -> None:
    """Set the gauges from the shared state: breakers from their store, the buffer from the DB."""
    from resilience import status

    for breaker in status.breaker_status():
        if breaker.error:
            continue
        for state in BREAKER_STATES:
            BREAKER_STATE.labels(breaker.name, state).set(1 if breaker.state == state else 0)
        BREAKER_FAILURES.labels(breaker.name).set(breaker.failure_count)
        if breaker.state_since is not None:
            BREAKER_STATE_SINCE.labels(breaker.name).set(breaker.state_since.timestamp())
    buffer = status.buffer_status()
    if not buffer.error:
        for state, n in buffer.by_status.items():
            RECEIPTS_IN_BUFFER.labels(state).set(n)
        RECEIPTS_OLDEST_PENDING.set(buffer.oldest_pending_age_seconds or 0)


def exposition() -> tuple[bytes, str]:
    """The metrics text and its content type, adding up every process in multi-process mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
