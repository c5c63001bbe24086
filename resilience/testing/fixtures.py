"""pytest fixtures for a stub MemoryGate.

Load them with ``pytest_plugins = ["resilience.testing.fixtures"]`` in a ``conftest.py``.

One stub serves the whole session because starting a process per test would cost more than most
tests; each test still starts clean because ``stub_memorygate`` resets it first. A test that means
to kill or stop a stub should start its own with ``StubMemoryGate.start()`` instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from resilience.testing.stub_process import StubMemoryGate


@pytest.fixture(scope="session")
def stub_memorygate_server() -> Iterator[StubMemoryGate]:
    """The session's stub, started on first use with the API key ``test-key``."""
    with StubMemoryGate.start() as stub:
        yield stub


@pytest.fixture
def stub_memorygate(stub_memorygate_server: StubMemoryGate) -> Iterator[StubMemoryGate]:
    """The session's stub with no stored receipts, zeroed counters and no faults."""
    stub_memorygate_server.reset()
    yield stub_memorygate_server
