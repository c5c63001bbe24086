"""Rate limits, a shared circuit breaker and a durable receipt buffer for AsyncGate."""
