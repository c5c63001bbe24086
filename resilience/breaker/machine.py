"""The circuit breaker's state machine: pure transitions over one record, with the clock passed in.

States and rules (DESIGN.md, "Circuit breaker semantics"):

* CLOSED: calls pass. A failure adds one to ``failures``; ``failure_threshold`` consecutive
  failures open the circuit. A success resets the count.
* OPEN: calls are refused with the seconds left until ``opened_at + timeout_seconds``. The first
  acquire after that moves the circuit to HALF_OPEN and becomes a probe.
* HALF_OPEN: at most ``half_open_max_calls`` probes in flight. Each probe holds a *lease*: a slot
  token with an expiry (``probe_lease_seconds``). A probe that finishes gives its slot back, so a
  ``success_threshold`` larger than ``half_open_max_calls`` still closes the circuit; a probe
  whose worker died gives it back when the lease expires. ``success_threshold`` consecutive probe
  successes close the circuit; any probe failure re-opens it (a fresh ``timeout_seconds``).
  An ignored probe (neither success nor failure) only frees its slot. A probe's outcome drives
  only the half-open period that admitted it: each entry into HALF_OPEN starts a new period
  (``probe_epoch``, named in the probe's token), so a slow probe admitted before the circuit
  re-opened counts in the totals only, never towards closing or re-opening a later period. Within
  its own period a probe counts even after its lease expired (it was slow, not dead).
* Operator override: ``force_open`` refuses every call, ``force_closed`` admits every call and
  records outcomes in the totals without moving the state. Clearing the override resumes the
  automatic state where it stood.

Every move between states records ``state_since`` (the clock's time), so operators see how long
a circuit has held its state; a reset from a state other than CLOSED counts as a move.

A permit remembers how it was admitted (``PermitKind``): the outcome of a call admitted while
CLOSED only counts while the circuit is still CLOSED (a late failure of a call admitted before the
circuit opened must not push an open circuit around), and only probe outcomes drive HALF_OPEN.

``Circuit`` is the whole record. The memory store keeps one under a lock; the Redis store's Lua
script implements the same rules over a hash (``stores/redis.py``), and one contract test suite
runs every transition against both.
"""

from __future__ import annotations

import datetime
import enum
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

# A refusal in HALF_OPEN (every slot taken) suggests retrying this soon: probes normally end
# within one request timeout, long before their lease would expire.
HALF_OPEN_RETRY_AFTER_CAP = 1.0
# Long enough for any sane probe call (the MemoryGate timeout is 0.5 s), short enough that a slot
# held by a killed worker comes back "within seconds".
DEFAULT_PROBE_LEASE_SECONDS = 10.0
# An error message is kept for the admin and the stats, not as a log archive.
MAX_ERROR_LENGTH = 500


class State(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Outcome(enum.Enum):
    """What a call's result means to the breaker; returned by ``classify`` callables."""

    SUCCESS = "success"
    FAILURE = "failure"
    IGNORE = "ignore"


class Override(enum.StrEnum):
    """Operator overrides; the values are those of ``models.BreakerOverride``."""

    NONE = ""
    FORCE_OPEN = "force_open"
    FORCE_CLOSED = "force_closed"


class PermitKind(enum.StrEnum):
    CLOSED = "closed"  # admitted while CLOSED
    PROBE = "probe"  # admitted as a HALF_OPEN probe, holds a lease
    FORCED = "forced"  # admitted under force_closed: totals only
    BYPASS = "bypass"  # breaker disabled: nothing is recorded


@dataclass(frozen=True)
class Policy:
    """The numbers a breaker runs on (a ``BreakerPolicy`` row, or the settings defaults)."""

    enabled: bool = True
    failure_threshold: int = 5
    timeout_seconds: float = 60
    half_open_max_calls: int = 3
    success_threshold: int = 2
    override: Override = Override.NONE

    def __post_init__(self) -> None:
        for name in ("failure_threshold", "half_open_max_calls", "success_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"Breaker policy {name} must be an integer of at least 1, not {value!r}."
                )
        timeout = self.timeout_seconds
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"Breaker policy timeout_seconds must be positive, not {timeout!r}.")
        object.__setattr__(self, "override", Override(self.override))

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["override"] = str(self.override)
        return values


@dataclass(frozen=True)
class Ticket:
    """How a call was admitted; the permit hands it back with the outcome."""

    kind: PermitKind
    token: str = ""
    fallback: bool = False  # issued by the Redis store's local fallback


@dataclass(frozen=True)
class Transition:
    previous: State
    current: State
    stats: dict[str, Any]


@dataclass(frozen=True)
class Admission:
    ticket: Ticket | None  # None: refused
    retry_after: float = 0.0
    transition: Transition | None = None

    @property
    def admitted(self) -> bool:
        return self.ticket is not None


# The answers of the hot path, made once: a healthy call allocates nothing for its admission.
ADMIT_CLOSED = Admission(Ticket(PermitKind.CLOSED))
ADMIT_FORCED = Admission(Ticket(PermitKind.FORCED))


def stats_dict(state: Any, *, probes_in_flight: int) -> dict[str, Any]:
    """The public ``stats()`` mapping (DESIGN.md's ``get_circuit_stats()`` fields and more).

    ``state`` is anything with the breaker's fields: the memory store's ``Circuit`` or the Redis
    store's ``Snapshot``; both stores answer in this one shape.
    """
    return {
        "state": str(state.state),
        "failure_count": state.failures,
        "success_count": state.successes,
        "total_calls": state.calls,
        "total_failures": state.total_failures,
        "total_successes": state.total_successes,
        "total_rejections": state.rejections,
        "opened_at": timestamp(state.opened_at),
        "state_since": timestamp(state.state_since),
        "last_failure_time": timestamp(state.last_failure_time),
        "last_error": state.last_error,
        "probes_in_flight": probes_in_flight,
        "override": str(state.policy.override),
        "policy": state.policy.as_dict(),
    }


def timestamp(value: float | None) -> datetime.datetime | None:
    if value is None:
        return None
    return datetime.datetime.fromtimestamp(value, tz=datetime.UTC)


# Credentials that error texts tend to carry: "Bearer <token>", "api_key=...", "user:pw@host".
_SECRETS = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s,;'\"]+"), r"\1 [redacted]"),
    (re.compile(r"(?i)\b(api[_-]?key|token|password|secret)=([^\s&,;'\"]+)"), r"\1=[redacted]"),
    (re.compile(r"://[^/\s:@]+:[^/\s@]+@"), "://[redacted]@"),
)


def clip_error(error: str) -> str:
    """An error text safe to store, show and log: credentials scrubbed, length bounded."""
    text = str(error)
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text[:MAX_ERROR_LENGTH]


def probe_epoch_of(token: str) -> int | None:
    """The half-open period named by a probe token (``"<epoch>:<random>"``), None if none."""
    epoch, separator, _ = token.partition(":")
    return int(epoch) if separator and epoch.isdigit() else None


# The fields a circuit shares with the Redis store's snapshot, besides the policy (a snapshot
# counts probe leases but holds none, and knows no epoch).
_VIEW_FIELDS = (
    "state",
    "failures",
    "successes",
    "opened_at",
    "state_since",
    "last_failure_time",
    "last_error",
    "calls",
    "total_failures",
    "total_successes",
    "rejections",
)


@dataclass
class Circuit:
    """One breaker's whole state; callers serialise access (the memory store holds a lock)."""

    policy: Policy
    state: State = State.CLOSED
    failures: int = 0
    successes: int = 0
    opened_at: float | None = None
    # When the circuit entered its current state (None: not known, e.g. before the first call).
    state_since: float | None = None
    last_failure_time: float | None = None
    last_error: str = ""
    calls: int = 0
    total_failures: int = 0
    total_successes: int = 0
    rejections: int = 0
    probes: dict[str, float] = field(default_factory=dict)  # slot token -> lease expiry
    probe_epoch: int = 0  # bumped on every entry into HALF_OPEN; prefixes each probe's token

    @classmethod
    def from_view(cls, view: Any, *, probe_epoch: int = 0) -> Circuit:
        """A circuit in the state of ``view`` (a Redis store's snapshot), without probe leases.

        The leases stay where they were granted (in Redis); only the state, counts and policy
        carry over, so a circuit the fleet opened stays open here until its own timeout.
        """
        return cls(
            policy=view.policy,
            probe_epoch=probe_epoch,
            **{name: getattr(view, name) for name in _VIEW_FIELDS},
        )

    def acquire(self, now: float, new_token: Callable[[], str], lease_seconds: float) -> Admission:
        override = self.policy.override
        if override == Override.FORCE_OPEN:
            self.rejections += 1
            return Admission(None, retry_after=float(self.policy.timeout_seconds))
        if override == Override.FORCE_CLOSED:
            self.calls += 1
            return ADMIT_FORCED
        if self.state == State.CLOSED:
            self.calls += 1
            return ADMIT_CLOSED
        transition = None
        if self.state == State.OPEN:
            left = (self.opened_at or 0.0) + self.policy.timeout_seconds - now
            if left > 0:
                self.rejections += 1
                return Admission(None, retry_after=left)
            transition = self._move(State.HALF_OPEN, now)
        self._expire_leases(now)
        if len(self.probes) >= self.policy.half_open_max_calls:
            self.rejections += 1
            earliest = min(self.probes.values()) - now
            return Admission(None, retry_after=max(0.0, min(earliest, HALF_OPEN_RETRY_AFTER_CAP)))
        token = f"{self.probe_epoch}:{new_token()}"
        self.probes[token] = now + lease_seconds
        self.calls += 1
        if transition is not None:
            transition = Transition(transition.previous, transition.current, self.stats(now))
        return Admission(Ticket(PermitKind.PROBE, token), transition=transition)

    def settle(self, ticket: Ticket, outcome: Outcome, error: str, now: float) -> Transition | None:
        if ticket.kind == PermitKind.BYPASS:
            return None
        kind = ticket.kind
        if kind == PermitKind.PROBE:
            self.probes.pop(ticket.token, None)
            if probe_epoch_of(ticket.token) != self.probe_epoch:
                # Admitted in an earlier half-open period: like a forced call, it only counts
                # in the totals.
                kind = PermitKind.FORCED
        if outcome == Outcome.IGNORE:
            return None
        if outcome == Outcome.SUCCESS:
            return self._on_success(kind, now)
        return self._on_failure(kind, clip_error(error), now)

    def _on_success(self, kind: PermitKind, now: float) -> Transition | None:
        self.total_successes += 1
        if kind == PermitKind.CLOSED and self.state == State.CLOSED:
            self.failures = 0
        elif kind == PermitKind.PROBE and self.state == State.HALF_OPEN:
            self.successes += 1
            if self.successes >= self.policy.success_threshold:
                return self._announce(self._move(State.CLOSED, now), now)
        return None

    def _on_failure(self, kind: PermitKind, error: str, now: float) -> Transition | None:
        self.total_failures += 1
        self.last_failure_time = now
        self.last_error = error
        if kind == PermitKind.CLOSED and self.state == State.CLOSED:
            self.failures += 1
            if self.failures >= self.policy.failure_threshold:
                return self._announce(self._move(State.OPEN, now), now)
        elif kind == PermitKind.PROBE and self.state == State.HALF_OPEN:
            return self._announce(self._move(State.OPEN, now), now)
        return None

    def reset(self, now: float) -> Transition | None:
        """Closed, every count and the last error cleared; the policy and override stay."""
        previous = self.state
        self.state = State.CLOSED
        self.failures = self.successes = 0
        self.opened_at = self.last_failure_time = None
        self.last_error = ""
        self.calls = self.total_failures = self.total_successes = self.rejections = 0
        self.probes.clear()
        if previous == State.CLOSED:
            return None
        self.state_since = now
        return Transition(previous, State.CLOSED, self.stats(now))

    def _move(self, state: State, now: float) -> Transition:
        previous = self.state
        self.state = state
        self.state_since = now
        self.successes = 0
        self.probes.clear()
        if state == State.OPEN:
            self.opened_at = now
        elif state == State.HALF_OPEN:
            self.probe_epoch += 1
        elif state == State.CLOSED:
            self.failures = 0
            self.opened_at = None
        return Transition(previous, state, {})

    def _announce(self, transition: Transition, now: float) -> Transition:
        return Transition(transition.previous, transition.current, self.stats(now))

    def _expire_leases(self, now: float) -> None:
        for token in [token for token, expiry in self.probes.items() if expiry <= now]:
            del self.probes[token]

    def stats(self, now: float) -> dict[str, Any]:
        self._expire_leases(now)
        return stats_dict(self, probes_in_flight=len(self.probes))
