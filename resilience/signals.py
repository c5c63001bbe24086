"""Domain events of the app, named in the past tense.

Receivers get ``sender`` and the keyword arguments documented beside each signal.
"""

from django.db.models.signals import ModelSignal
from django.dispatch import Signal

# Receipts (sender: the class that did it, ``MemoryGateClient`` or the drain's ``Drainer``).

#: A receipt could not be delivered now and was written to the buffer, pending.
#: Arguments: ``receipt_id`` (str), ``receipt_type`` (str), ``reason`` (str).
receipt_buffered = Signal()

#: MemoryGate stored a receipt (or already had it). Arguments: ``receipt_id`` (str),
#: ``buffered`` (bool: True when it came from the buffer, by the drain).
receipt_delivered = Signal()

#: A receipt will not be retried on its own: MemoryGate refused it, or it ran out of attempts.
#: Arguments: ``receipt_id`` (str), ``reason`` (str).
receipt_dead_lettered = Signal()

#: The drain settled one batch (sender: ``Drainer``). Arguments: ``size`` (int, rows claimed),
#: ``delivered``, ``failed``, ``dead``, ``released`` (int, rows settled each way), ``duration``
#: (float, seconds from claim to settled, wall time on the monotonic clock).
receipt_batch_drained = Signal()

# Circuit breakers (sender: ``resilience.breaker.Breaker``). Sent once per transition, by the
# process whose call or operator action caused it; receivers run in that call, so keep them short.
# Arguments of all three: ``name`` (str, the breaker's name), ``state`` (str, the new state:
# "open", "half_open" or "closed"), ``previous_state`` (str), ``stats`` (dict: the fields of
# ``Breaker.stats()`` just after the transition, with ``last_error`` already scrubbed).

#: The circuit opened: ``failure_threshold`` consecutive failures, or a failed probe.
circuit_opened = Signal()

#: The open timeout passed and the first probe was let through.
circuit_half_opened = Signal()

#: ``success_threshold`` consecutive probes succeeded, or an operator reset the circuit.
circuit_closed = Signal()

# Policy tables (sender: the model, ``RateLimitRule`` or ``BreakerPolicy``).

#: Rows were written by ``QuerySet.update()``, ``bulk_create()`` or ``bulk_update()``, which send
#: no ``post_save``: the registries reload them as they would after a save. Arguments: ``using``
#: (str, the database alias), ``pks`` (list of the primary keys written). A ``ModelSignal``, like
#: ``post_save``, so receivers may name the sender lazily ("resilience.BreakerPolicy").
policy_rows_changed = ModelSignal(use_caching=True)
