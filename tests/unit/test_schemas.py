from __future__ import annotations

import json
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from schemas import (
    EventDecodeError,
    EventEnvelope,
    InvalidPayload,
    InvoiceState,
    UnknownSchemaVersion,
    all_topics,
    decode_event,
    dlq_topic,
    encode_event,
    retry_topic,
    topic_for,
)
from schemas.json_schema import export_json_schemas


def invoice_payload(**over: object) -> dict:
    payload = {
        "id": 7, "invoice_number": "INV-0007", "project_id": 1, "client_id": 3, "client_name": "Acme",
        "issue_date": "2026-11-02", "due_date": "2026-12-02", "status": "sent", "subtotal": "151.00",
        "tax_rate": "10.00", "tax_amount": "15.10", "total_amount": "166.10", "currency_code": "USD",
        "items": [{"id": 1, "invoice_id": 7, "description": "Work", "quantity": "2.00", "unit_price": "75.50",
                   "total_amount": "151.00"}],
        "client": {"id": 3, "name": "Acme", "email": "a@acme.test"},
    }
    payload.update(over)
    return payload


def envelope(**over: object) -> dict:
    env = {
        "event_id": str(uuid.uuid4()), "event_type": "invoice.updated", "aggregate_type": "invoice",
        "aggregate_id": "7", "aggregate_version": 3, "occurred_at": "2026-11-26T10:00:00.123456Z",
        "schema_version": "1.0", "source": "tt-prod", "payload": invoice_payload(),
    }
    env.update(over)
    return env


def test_decode_valid_event_and_money_stays_exact() -> None:
    evt = decode_event(json.dumps(envelope()).encode())
    state = evt.state()
    assert isinstance(state, InvoiceState)
    assert state.total_amount == Decimal("166.10")
    assert state.items[0].unit_price == Decimal("75.50")
    assert evt.action == "updated"
    assert evt.occurred_at.utcoffset().total_seconds() == 0


def test_money_serialises_as_string_never_float() -> None:
    state = InvoiceState.model_validate(invoice_payload())
    dumped = json.loads(state.model_dump_json())
    assert dumped["total_amount"] == "166.10"
    assert dumped["items"][0]["quantity"] == "2.00"


def test_round_trip_encode_decode() -> None:
    evt = decode_event(json.dumps(envelope()).encode())
    assert decode_event(encode_event(evt)) == evt


def test_unknown_extra_fields_are_tolerated() -> None:
    raw = envelope(new_top_level="x", payload=invoice_payload(peppol_id="0088:123", items=[]))
    evt = decode_event(json.dumps(raw).encode())
    assert evt.state().invoice_number == "INV-0007"


@pytest.mark.parametrize("version", ["2.0", "0.9", "", None, 1])
def test_unknown_major_version_is_a_clear_error(version: object) -> None:
    with pytest.raises(UnknownSchemaVersion, match="not supported"):
        decode_event(json.dumps(envelope(schema_version=version)).encode())


def test_minor_versions_of_the_same_major_are_accepted() -> None:
    assert decode_event(json.dumps(envelope(schema_version="1.7")).encode()).schema_version == "1.7"


@pytest.mark.parametrize(
    "value",
    [b"", b"\xff\xfe", b"not json", b"[1,2]", b"null", None,
     json.dumps(envelope(event_type="invoice.exploded")).encode(),
     json.dumps(envelope(event_type="expense.created")).encode(),
     json.dumps(envelope(aggregate_version=0)).encode(),
     b'{"n": ' + b"9" * 200_000 + b"}",  # Python refuses ints of 4,300+ digits with a plain ValueError
     b"[" * 100_000 + b"]" * 100_000],
)
def test_malformed_records_raise_decode_errors(value: bytes | None) -> None:
    with pytest.raises(EventDecodeError):
        decode_event(value)


def test_invalid_payload_is_its_own_error() -> None:
    with pytest.raises(InvalidPayload, match="invoice payload invalid"):
        decode_event(json.dumps(envelope(payload={"id": "x"})).encode())


def test_topic_and_header_names_live_in_one_place() -> None:
    assert topic_for("invoice") == "timetracker.invoice"
    assert all_topics("acme") == ["acme.invoice", "acme.expense", "acme.payment", "acme.client"]
    assert dlq_topic("acme") == "acme.dlq"
    assert retry_topic("acme.invoice", 30) == "acme.invoice.retry.30s"


def test_export_json_schema_for_every_event_type(tmp_path: Path) -> None:
    files = export_json_schemas(tmp_path)
    assert len(files) == 16
    schema = json.loads((tmp_path / "invoice.created.json").read_text())
    assert schema["properties"]["event_type"]["const"] == "invoice.created"
    payload_props = schema["properties"]["payload"]["properties"]
    assert "items" in payload_props and "invoice_number" in payload_props
    # money is a string in the serialised form
    assert payload_props["total_amount"]["type"] == "string"


def test_envelope_is_frozen() -> None:
    evt = EventEnvelope.model_validate(envelope())
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError for frozen models
        evt.aggregate_version = 9  # type: ignore[misc]
