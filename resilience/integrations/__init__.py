"""Facades for the services AsyncGate talks to (MemoryGate), in the names of the original guide.

``get_memorygate_client()`` returns the process's ``MemoryGateClient``, built from ``RESILIENCE``;
construct ``MemoryGateClient(base_url, api_key, timeout, transport=...)`` for any other target.
"""

from resilience.integrations.memorygate_client import MemoryGateClient, get_memorygate_client

__all__ = ["MemoryGateClient", "get_memorygate_client"]
