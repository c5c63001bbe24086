"""``Breaker``: the object callers hold. Permits, guards, the decorator, signals and log lines.

A call goes through a breaker in three steps: ``acquire()`` (raises ``CircuitOpen`` when the
circuit refuses it), the call itself, then exactly one of ``permit.success()``,
``permit.failure(error)`` or ``permit.ignore()``. ``guard()`` / ``aguard()`` and ``protect()`` do
the three steps around a block or a function: an exception counts as a failure and is re-raised,
a returned value is judged by ``classify(result) -> Outcome`` (an HTTP 503 returned without an
exception is a failure; a 404 may be neither), cancellation and ``KeyboardInterrupt`` count as
neither.

The breaker knows nothing of MemoryGate or the ORM: its state lives in a ``Store`` and its policy
comes from the store (a Redis store reads the fleet's policy from Redis). A disabled breaker
(``enabled`` False) admits every call and records nothing.

Every transition is logged on the ``resilience.breaker`` logger and sent as a signal
(``circuit_opened``, ``circuit_half_opened``, ``circuit_closed``; see ``resilience.signals``) by
the process whose call or action caused it, so each transition is announced once for the fleet.
Error texts are clipped and scrubbed of credentials (``machine.clip_error``) before they are
stored, logged or sent.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from resilience import signals
from resilience.breaker.machine import (
    Outcome,
    Override,
    PermitKind,
    Policy,
    State,
    Ticket,
    Transition,
    clip_error,
)
from resilience.breaker.stores import Store
from resilience.exceptions import CircuitOpen

logger = logging.getLogger("resilience.breaker")

F = TypeVar("F", bound=Callable[..., Any])
Classifier = Callable[[Any], Outcome]
ExceptionClassifier = Callable[[BaseException], Outcome]

_SIGNALS = {
    State.OPEN: signals.circuit_opened,
    State.HALF_OPEN: signals.circuit_half_opened,
    State.CLOSED: signals.circuit_closed,
}


class Permit:
    """The right to make one call; settle it exactly once."""

    __slots__ = ("_breaker", "_settled", "ticket")

    def __init__(self, breaker: Breaker, ticket: Ticket) -> None:
        self._breaker = breaker
        self.ticket = ticket
        self._settled = False

    @property
    def is_probe(self) -> bool:
        return self.ticket.kind == PermitKind.PROBE

    def _claim(self) -> None:
        if self._settled:
            raise RuntimeError(
                f"This permit of breaker {self._breaker.name!r} was already settled: call exactly "
                "one of success(), failure() or ignore() per permit."
            )
        self._settled = True

    def settle(self, outcome: Outcome, error: str = "") -> None:
        self._claim()
        transition = self._breaker.store.settle(self.ticket, outcome, error)
        self._breaker._announce(transition)

    async def asettle(self, outcome: Outcome, error: str = "") -> None:
        self._claim()
        transition = await self._breaker.store.asettle(self.ticket, outcome, error)
        await self._breaker._aannounce(transition)

    def success(self) -> None:
        self.settle(Outcome.SUCCESS)

    def failure(self, error: str = "") -> None:
        self.settle(Outcome.FAILURE, error)

    def ignore(self) -> None:
        self.settle(Outcome.IGNORE)

    async def asuccess(self) -> None:
        await self.asettle(Outcome.SUCCESS)

    async def afailure(self, error: str = "") -> None:
        await self.asettle(Outcome.FAILURE, error)

    async def aignore(self) -> None:
        await self.asettle(Outcome.IGNORE)


def describe_exception(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def describe_result(result: Any) -> str:
    """A failure description of a returned value that never includes its content."""
    status = getattr(result, "status_code", None)
    if isinstance(status, int):
        return f"HTTP {status} ({type(result).__name__})"
    return f"{type(result).__name__} classified as a failure"


class _Guard:
    """The state of one guarded block: its permit and the outcome observed so far."""

    def __init__(
        self,
        breaker: Breaker,
        classify: Classifier | None,
        classify_exception: ExceptionClassifier | None,
    ) -> None:
        self._breaker = breaker
        self._classify = classify
        self._classify_exception = classify_exception
        self._outcome = Outcome.SUCCESS
        self._error = ""
        self.permit: Permit | None = None

    def observe(self, result: Any) -> Any:
        """Judge a value the block produced with ``classify``; returns it unchanged."""
        if self._classify is not None:
            self._outcome = self._classify(result)
            self._error = describe_result(result) if self._outcome == Outcome.FAILURE else ""
        return result

    def _judge(self, exc: BaseException | None) -> tuple[Outcome, str]:
        if exc is None:
            return self._outcome, self._error
        if not isinstance(exc, Exception):  # cancellation, KeyboardInterrupt, SystemExit
            return Outcome.IGNORE, ""
        outcome = self._classify_exception(exc) if self._classify_exception else Outcome.FAILURE
        return outcome, describe_exception(exc)

    def __enter__(self) -> _Guard:
        self.permit = self._breaker.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self.permit is not None
        self.permit.settle(*self._judge(exc))

    async def __aenter__(self) -> _Guard:
        self.permit = await self._breaker.aacquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self.permit is not None
        await self.permit.asettle(*self._judge(exc))


class Breaker:
    """One named circuit over a state store.

    ``persist_override`` (given by ``get_breaker``) records an operator override where staff see
    it (the ``BreakerPolicy`` row); the breaker itself never touches the database.
    """

    def __init__(
        self,
        name: str,
        store: Store,
        *,
        persist_override: Callable[[str, Override], None] | None = None,
    ) -> None:
        self.name = name
        self.store = store
        self._persist_override = persist_override

    def __repr__(self) -> str:
        return f"<Breaker {self.name!r} on {type(self.store).__name__}>"

    @property
    def policy(self) -> Policy:
        """The policy in force as this process last saw it (no I/O)."""
        return self.store.policy

    @property
    def enabled(self) -> bool:
        """False: callers bypass the breaker entirely (and ``acquire`` records nothing).

        While disabled, reading this polls the store (lazily, never blocking an event loop):
        callers that bypass the breaker make no other call that would learn it was re-enabled.
        """
        if self.store.policy.enabled:
            return True
        self.store.poll()
        return self.store.policy.enabled

    # ------------------------------------------------------------------ calls

    def acquire(self) -> Permit:
        """A permit for one call; raises ``CircuitOpen`` when the circuit refuses it."""
        if not self.enabled:
            return Permit(self, Ticket(PermitKind.BYPASS))
        admission = self.store.acquire()
        self._announce(admission.transition)
        if admission.ticket is None:
            raise CircuitOpen(self.name, admission.retry_after)
        return Permit(self, admission.ticket)

    async def aacquire(self) -> Permit:
        if not self.enabled:
            return Permit(self, Ticket(PermitKind.BYPASS))
        admission = await self.store.aacquire()
        await self._aannounce(admission.transition)
        if admission.ticket is None:
            raise CircuitOpen(self.name, admission.retry_after)
        return Permit(self, admission.ticket)

    def guard(
        self,
        classify: Classifier | None = None,
        *,
        classify_exception: ExceptionClassifier | None = None,
    ) -> _Guard:
        """``with breaker.guard(classify=...) as call: call.observe(do_it())``.

        Without ``observe`` a block that ends normally is a success. Exceptions are failures
        unless ``classify_exception`` says otherwise; they are always re-raised.
        """
        return _Guard(self, classify, classify_exception)

    def aguard(
        self,
        classify: Classifier | None = None,
        *,
        classify_exception: ExceptionClassifier | None = None,
    ) -> _Guard:
        """``async with breaker.aguard(classify=...) as call: call.observe(await do_it())``."""
        return _Guard(self, classify, classify_exception)

    def protect(
        self,
        classify: Classifier | None = None,
        *,
        classify_exception: ExceptionClassifier | None = None,
    ) -> Callable[[F], F]:
        """Decorator for sync and async functions; the return value goes to ``classify``."""

        def decorate(func: F) -> F:
            if inspect.iscoroutinefunction(func):

                @functools.wraps(func)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    async with self.aguard(classify, classify_exception=classify_exception) as g:
                        return g.observe(await func(*args, **kwargs))

                return async_wrapper  # type: ignore[return-value]

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with self.guard(classify, classify_exception=classify_exception) as g:
                    return g.observe(func(*args, **kwargs))

            return wrapper  # type: ignore[return-value]

        return decorate

    # ------------------------------------------------------------------ inspection and operators

    def stats(self) -> dict[str, Any]:
        """The fields of ``get_circuit_stats()``, plus ``name``, ``probes_in_flight``, ``store``."""
        return {"name": self.name, **self.store.stats()}

    async def astats(self) -> dict[str, Any]:
        return {"name": self.name, **(await self.store.astats())}

    def reset(self) -> None:
        """Close the circuit for every worker and clear its counts (an override stays)."""
        transition = self.store.reset()
        logger.info("Circuit %r reset: closed, counts cleared.", self.name)
        self._announce(transition)

    async def areset(self) -> None:
        transition = await self.store.areset()
        logger.info("Circuit %r reset: closed, counts cleared.", self.name)
        await self._aannounce(transition)

    def force_open(self) -> None:
        """Refuse every call, fleet-wide, until ``clear_override()``."""
        self._set_override(Override.FORCE_OPEN)

    def force_closed(self) -> None:
        """Admit every call, fleet-wide, until ``clear_override()``; outcomes only count."""
        self._set_override(Override.FORCE_CLOSED)

    def clear_override(self) -> None:
        """Back to automatic: the state machine resumes where it stood."""
        self._set_override(Override.NONE)

    def _set_override(self, override: Override) -> None:
        # The fleet first: if the store is unreachable nothing is recorded as done.
        self.store.set_override(override)
        if self._persist_override is not None:
            self._persist_override(self.name, override)
        logger.warning(
            "Circuit %r override %s.",
            self.name,
            f"set to {override.value}" if override else "cleared (automatic again)",
        )

    # ------------------------------------------------------------------ announcements

    def _log_transition(self, transition: Transition) -> None:
        stats = transition.stats
        policy = stats.get("policy", {})
        if transition.current == State.OPEN:
            reason = (
                "a probe failed"
                if transition.previous == State.HALF_OPEN
                else f"{stats.get('failure_count')} consecutive failures"
            )
            logger.warning(
                "Circuit %r opened (%s; last error: %s); calls fail fast for %s s.",
                self.name,
                reason,
                clip_error(stats.get("last_error") or "none"),
                policy.get("timeout_seconds"),
            )
        elif transition.current == State.HALF_OPEN:
            logger.info(
                "Circuit %r half-open: probing with up to %s call(s) in flight.",
                self.name,
                policy.get("half_open_max_calls"),
            )
        else:
            logger.info("Circuit %r closed (was %s).", self.name, transition.previous.value)

    def _signal_kwargs(self, transition: Transition) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": transition.current.value,
            "previous_state": transition.previous.value,
            "stats": {"name": self.name, **transition.stats},
        }

    def _announce(self, transition: Transition | None) -> None:
        if transition is None:
            return
        self._log_transition(transition)
        responses = _SIGNALS[transition.current].send_robust(
            sender=Breaker, **self._signal_kwargs(transition)
        )
        _log_receiver_errors(responses)

    async def _aannounce(self, transition: Transition | None) -> None:
        if transition is None:
            return
        self._log_transition(transition)
        responses = await _SIGNALS[transition.current].asend_robust(
            sender=Breaker, **self._signal_kwargs(transition)
        )
        _log_receiver_errors(responses)


def _log_receiver_errors(responses: list[tuple[Any, Any]]) -> None:
    # A broken receiver must not fail the protected call, nor go unnoticed.
    for receiver, response in responses:
        if isinstance(response, Exception):
            logger.error(
                "Breaker signal receiver %r raised %s",
                receiver,
                describe_exception(response),
                exc_info=response,
            )
