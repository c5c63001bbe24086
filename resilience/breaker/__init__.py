"""Circuit breakers whose state the fleet shares: the public API.

::

    from resilience.breaker import get_breaker, Outcome
    breaker = get_breaker("memorygate")
    if breaker.enabled:
        permit = await breaker.aacquire()          # CircuitOpen when refused
        ...                                        # the call
        await permit.asuccess()                    # or afailure(error) / aignore()

    with breaker.guard(classify=lambda r: Outcome.FAILURE if r.status_code >= 500
                       else Outcome.SUCCESS) as call:
        call.observe(httpx.get(url))

Modules, read bottom-up: ``machine`` (the pure state machine and its values), ``stores`` (where
the state lives: memory, Redis), ``circuit`` (``Breaker`` and ``Permit``), ``registry`` (one breaker
per ``BreakerPolicy`` per process, kept in step with the row). Nothing here knows MemoryGate.
"""

from resilience.breaker.circuit import Breaker, Permit
from resilience.breaker.machine import Outcome, Override, PermitKind, Policy, State
from resilience.breaker.registry import aget_breaker, forget_breakers, get_breaker
from resilience.exceptions import CircuitOpen

__all__ = [
    "Breaker",
    "CircuitOpen",
    "Outcome",
    "Override",
    "Permit",
    "PermitKind",
    "Policy",
    "State",
    "aget_breaker",
    "forget_breakers",
    "get_breaker",
]
