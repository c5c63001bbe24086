"""AsyncGate: the demo task-queue API that the resilience app protects."""
