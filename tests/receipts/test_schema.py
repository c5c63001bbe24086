import json
import re
import uuid
from datetime import UTC, datetime

import pytest

from resilience.receipts.schema import MAX_BODY_BYTES, MAX_BODY_DEPTH, build_receipt


def nested(depth: int) -> dict:
    """A body ``depth`` objects deep (the body itself counts as one)."""
    body: dict = {}
    for _ in range(depth - 1):
        body = {"a": body}
    return body


def test_build_receipt__gives_a_fresh_uuid4_and_an_aware_timestamp(receipt_fields):
    first = build_receipt(**receipt_fields())
    second = build_receipt(**receipt_fields())

    assert first.receipt_id != second.receipt_id
    assert first.receipt_id.version == 4
    assert first.created_at.tzinfo is not None


def test_build_receipt__wire_form_uses_the_contract_names(receipt_fields):
    lease = uuid.uuid4()
    receipt = build_receipt(**receipt_fields(lease_id=str(lease)))

    wire = receipt.to_wire()

    assert set(wire) == {
        "receipt_id", "tenant_id", "receipt_type", "from", "to", "body", "created_at",
        "task_id", "lease_id",
    }  # fmt: skip
    assert wire["from"] == {"kind": "service", "id": receipt.from_principal["id"]}
    assert wire["lease_id"] == str(lease)
    assert json.loads(receipt.wire_bytes) == wire
    assert datetime.fromisoformat(wire["created_at"]) == receipt.created_at


def test_build_receipt__optional_ids_are_left_out_when_absent(receipt_fields):
    wire = build_receipt(**receipt_fields(task_id=None)).to_wire()

    assert "task_id" not in wire
    assert "lease_id" not in wire


def test_build_receipt__body_is_copied_at_emit_time(receipt_fields):
    body = {"items": [1, 2]}
    receipt = build_receipt(**receipt_fields(body=body))

    body["items"].append(3)
    receipt.body["items"].append(4)

    assert receipt.to_wire()["body"] == {"items": [1, 2]}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"tenant_id": "not-a-uuid"}, "tenant_id"),
        ({"tenant_id": None}, "tenant_id"),
        ({"task_id": 42}, "task_id"),
        ({"lease_id": "nope"}, "lease_id"),
        ({"receipt_type": "task.exploded"}, "receipt_type"),
        ({"receipt_type": None}, "receipt_type"),
        ({"from_principal": "service:x"}, "from_principal"),
        ({"from_principal": {"kind": "robot", "id": "x"}}, "from_principal.kind"),
        ({"to_principal": {"kind": "worker", "id": "  "}}, "to_principal.id"),
        ({"to_principal": {"kind": "worker", "id": 7}}, "to_principal.id"),
        ({"to_principal": {"kind": "worker", "id": "w", "role": "x"}}, "to_principal.role"),
        ({"body": ["not", "an", "object"]}, "body"),
        ({"body": {"when": datetime.now(UTC)}}, "body"),
        ({"body": {"x": float("nan")}}, "body"),
        ({"body": {"blob": "x" * MAX_BODY_BYTES}}, "body"),
        ({"from_principal": {"kind": ["agent"], "id": "x"}}, "from_principal.kind"),
        ({"to_principal": {"kind": {"k": 1}, "id": "x"}}, "to_principal.kind"),
        ({"from_principal": {"kind": "agent", "id": "a\x00b"}}, "from_principal.id"),
        ({"to_principal": {"kind": "agent", "id": "\ud800"}}, "to_principal.id"),
        ({"body": {"note": "nul\x00here"}}, "body"),
        ({"body": {"items": [1, {"deep": ["\x00"]}]}}, "body"),
        ({"body": {"key\x00": 1}}, "body"),
        ({"body": {"half": "\udc00 of a pair"}}, "body"),
        ({"body": nested(5000)}, "body"),
        ({"body": nested(MAX_BODY_DEPTH + 1)}, "body"),
        ({"body": {"many": [0] * MAX_BODY_BYTES}}, "body"),
    ],
)
def test_build_receipt__bad_field_is_a_value_error_naming_it(receipt_fields, overrides, field):
    with pytest.raises(ValueError, match="^" + re.escape(field) + ":"):
        build_receipt(**receipt_fields(**overrides))


def test_build_receipt__body_defaults_to_an_empty_object(receipt_fields):
    fields = receipt_fields()
    del fields["body"]

    assert build_receipt(**fields).to_wire()["body"] == {}


def test_build_receipt__a_nul_is_reported_where_it_is(receipt_fields):
    with pytest.raises(ValueError, match=re.escape("body.items[1].deep[0] contains a NUL")):
        build_receipt(**receipt_fields(body={"items": [1, {"deep": ["\x00"]}]}))


def test_build_receipt__the_deepest_allowed_body_and_paired_surrogates_are_fine(receipt_fields):
    body = {"deep": nested(MAX_BODY_DEPTH - 1), "emoji": "\U0001f600", "escaped": "\\x00"}

    receipt = build_receipt(**receipt_fields(body=body))

    assert receipt.body == body
