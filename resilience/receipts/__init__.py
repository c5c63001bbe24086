"""Receipts: validation (``schema``), one POST to MemoryGate (``transport``), the durable buffer
(``buffer``), retry timing (``backoff``) and the drain that empties the buffer (``drain``).

The client facade in ``resilience.integrations`` and the ``drain_receipts`` command sit on top of
these modules; nothing here imports them back.
"""
