"""Helpers for the project's and its users' tests: a stub MemoryGate server and pytest fixtures."""
