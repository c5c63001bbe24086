"""A receipt's validation and wire form.

``build_receipt`` checks every field before anything is sent or stored and raises ``ValueError``
naming the first bad field (``tenant_id``, ``from_principal.kind``, ``body`` ...). What it returns
is a frozen ``Receipt`` whose ``receipt_id`` (uuid4) and ``created_at`` are made here, once, so
every later attempt, buffered or not, carries the same idempotency key and the same timestamp.

The body is serialized at validation time and kept as JSON text: later mutation of the caller's
dict cannot change the receipt, and anything that is not JSON (sets, datetimes, ``NaN``) is
refused now rather than at delivery time. The body's limit is ``MAX_BODY_BYTES`` serialized and
``MAX_BODY_DEPTH`` levels of nesting (checked without recursion, so a hostile body cannot exhaust
the stack). Strings in the body and principal ids may not hold NUL or lone surrogates: PostgreSQL
refuses to store either, and a receipt that cannot be buffered must be refused before it is sent.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from resilience.models import PrincipalKind, ReceiptType

# The serialized body may not exceed this; MemoryGate refuses large receipts with 413 anyway,
# and a buffer row should stay small.
MAX_BODY_BYTES = 32 * 1024
# Far deeper than any sensible receipt, far shallower than the recursion limits of the JSON
# encoders and decoders on the way (ours, the database's, MemoryGate's).
MAX_BODY_DEPTH = 64
MAX_PRINCIPAL_ID_LENGTH = 200
PRINCIPAL_KEYS = frozenset({"kind", "id"})
RECEIPT_TYPES = frozenset(ReceiptType.values)
PRINCIPAL_KINDS = frozenset(PrincipalKind.values)


@dataclass(frozen=True)
class Receipt:
    """A validated receipt, ready to send or to buffer. Build it with ``build_receipt``."""

    receipt_id: uuid.UUID
    tenant_id: uuid.UUID
    receipt_type: str
    from_principal: Mapping[str, str]
    to_principal: Mapping[str, str]
    body_json: str
    created_at: datetime
    task_id: uuid.UUID | None = None
    lease_id: uuid.UUID | None = None

    @property
    def body(self) -> dict[str, Any]:
        """A fresh copy of the body (the receipt itself keeps it serialized, hence immutable)."""
        return json.loads(self.body_json)

    def to_wire(self) -> dict[str, Any]:
        """The JSON object MemoryGate receives (``from``/``to`` under their wire names)."""
        wire: dict[str, Any] = {
            "receipt_id": str(self.receipt_id),
            "tenant_id": str(self.tenant_id),
            "receipt_type": self.receipt_type,
            "from": dict(self.from_principal),
            "to": dict(self.to_principal),
            "body": self.body,
            "created_at": self.created_at.isoformat(),
        }
        if self.task_id is not None:
            wire["task_id"] = str(self.task_id)
        if self.lease_id is not None:
            wire["lease_id"] = str(self.lease_id)
        return wire

    @cached_property
    def wire_bytes(self) -> bytes:
        """``to_wire()`` serialized once; the exact bytes of every POST of this receipt."""
        return encode_payload(self.to_wire())


def encode_payload(payload: Mapping[str, Any]) -> bytes:
    """Compact JSON, ``NaN`` refused: the one serialization of a wire body."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def build_receipt(
    *,
    tenant_id: uuid.UUID | str,
    receipt_type: str,
    from_principal: Mapping[str, Any],
    to_principal: Mapping[str, Any],
    task_id: uuid.UUID | str | None = None,
    lease_id: uuid.UUID | str | None = None,
    body: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> Receipt:
    """Validate the fields and return a ``Receipt`` with a fresh ``receipt_id``.

    Raises ``ValueError`` naming the first offending field; nothing is sent or stored then.
    """
    tenant = _uuid(tenant_id, "tenant_id", required=True)
    if not isinstance(receipt_type, str) or receipt_type not in RECEIPT_TYPES:
        raise ValueError(
            f"receipt_type: {receipt_type!r} is not a known receipt type; "
            f"expected one of {', '.join(sorted(RECEIPT_TYPES))}."
        )
    sender = _principal(from_principal, "from_principal")
    recipient = _principal(to_principal, "to_principal")
    task = _uuid(task_id, "task_id", required=False)
    lease = _uuid(lease_id, "lease_id", required=False)
    clean_body = _body({} if body is None else body)
    created_at = now or datetime.now(UTC)
    if created_at.tzinfo is None:
        raise ValueError("created_at: must be timezone-aware.")
    return Receipt(
        receipt_id=uuid.uuid4(),
        tenant_id=tenant,
        receipt_type=receipt_type,
        from_principal=sender,
        to_principal=recipient,
        body_json=clean_body,
        created_at=created_at,
        task_id=task,
        lease_id=lease,
    )


def _uuid(value: Any, name: str, *, required: bool) -> uuid.UUID | None:
    if value is None:
        if required:
            raise ValueError(f"{name}: is required (a UUID).")
        return None
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise ValueError(f"{name}: {value!r} is not a UUID.")


def _principal(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError(f'{name}: must be an object {{"kind": ..., "id": ...}}, not {value!r}.')
    unknown = sorted(str(key) for key in value if key not in PRINCIPAL_KEYS)
    if unknown:
        raise ValueError(f"{name}.{unknown[0]}: unknown key; a principal has only kind and id.")
    kind = value.get("kind")
    if not isinstance(kind, str) or kind not in PRINCIPAL_KINDS:
        raise ValueError(
            f"{name}.kind: {kind!r} is not one of {', '.join(sorted(PRINCIPAL_KINDS))}."
        )
    principal_id = value.get("id")
    if not isinstance(principal_id, str) or not principal_id.strip():
        raise ValueError(f"{name}.id: must be a non-empty string.")
    if len(principal_id) > MAX_PRINCIPAL_ID_LENGTH:
        raise ValueError(f"{name}.id: longer than {MAX_PRINCIPAL_ID_LENGTH} characters.")
    problem = _unstorable(principal_id)
    if problem:
        raise ValueError(f"{name}.id: {problem}.")
    return {"kind": str(kind), "id": principal_id}


def _body(value: Any) -> str:
    if not isinstance(value, Mapping):
        raise ValueError(f"body: must be a JSON object (a dict), not {type(value).__name__}.")
    _check_nesting_and_strings(value)
    try:
        encoded = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"body: is not JSON-serializable ({exc}).") from None
    size = len(encoded.encode())
    if size > MAX_BODY_BYTES:
        raise ValueError(f"body: {size} bytes serialized, over the limit of {MAX_BODY_BYTES}.")
    return encoded


def _unstorable(text: str) -> str:
    """Why the database cannot store ``text``, or "" when it can."""
    if "\x00" in text:
        return "contains a NUL character (\\x00)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode)"
    return ""


def _check_nesting_and_strings(body: Mapping[str, Any]) -> None:
    """Walk the body without recursion: bounded depth and size, storable strings (keys too).

    Every JSON value serializes to at least one byte, so more than ``MAX_BODY_BYTES`` values is
    over the limit however they are shared; that also bounds the walk itself. Each entry keeps its
    parent and key so the offending path is spelled out only when there is one to report.
    """
    stack: list[tuple[Any, int, Any, Any]] = [(body, 1, None, None)]
    seen = 0
    while stack:
        entry = stack.pop()
        value, depth = entry[0], entry[1]
        seen += 1
        if seen > MAX_BODY_BYTES:
            raise ValueError(f"body: more than {MAX_BODY_BYTES} values, over the size limit.")
        if isinstance(value, str):
            problem = _unstorable(value)
            if problem:
                raise ValueError(f"body: the string at {_path(entry)} {problem}.")
        elif isinstance(value, dict | list | tuple):
            if depth > MAX_BODY_DEPTH:
                raise ValueError(f"body: nested deeper than {MAX_BODY_DEPTH} levels.")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                problem = _unstorable(key) if isinstance(key, str) else ""
                if problem:
                    raise ValueError(f"body: a key of {_path(entry)} {problem}.")
                stack.append((item, depth + 1, entry, key))


def _path(entry: tuple[Any, int, Any, Any]) -> str:
    parts: list[str] = []
    while entry[2] is not None:
        key = entry[3]
        parts.append(
            f"[{key}]"
            if isinstance(key, int) and isinstance(entry[2][0], list | tuple)
            else f".{key}"
        )
        entry = entry[2]
    return "body" + "".join(reversed(parts))
