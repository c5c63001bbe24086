"""Facades for the services AsyncGate talks to (MemoryGate), in the names of the original guide."""
