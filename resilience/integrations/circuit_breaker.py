"""The original integration guide's import path for the circuit breaker.

The breaker is a domain mechanism shared by the MemoryGate client and the drain, so it lives in
``resilience.breaker``; this module only re-exports its public names.
"""

from resilience.breaker import (
    Breaker,
    CircuitOpen,
    Outcome,
    Override,
    Permit,
    Policy,
    State,
    aget_breaker,
    get_breaker,
)

__all__ = [
    "Breaker",
    "CircuitOpen",
    "Outcome",
    "Override",
    "Permit",
    "Policy",
    "State",
    "aget_breaker",
    "get_breaker",
]
