"""Kafka record <-> event envelope. Decoding failures are typed so the consumer can dead-letter them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from schemas.contract import MISSING_COLUMNS, SCHEMA_VERSION, Header
from schemas.events import EventEnvelope


class EventDecodeError(ValueError):
    """A record that can never become a valid event (not retryable)."""

    code = "malformed_event"


class UnknownSchemaVersion(EventDecodeError):
    code = "unknown_schema_version"


class InvalidPayload(EventDecodeError):
    code = "invalid_payload"


class CapturedSchemaDrift(InvalidPayload):
    """Capture found TimeTracker's row without a column ttsync reads (renamed or dropped by an upgrade)."""

    code = "timetracker_column_missing"


def missing_columns(state: object) -> list[str]:
    """Every ``table.column`` capture reported missing, anywhere in a state (root, items, client, ...)."""
    if isinstance(state, dict):
        found = [str(c) for c in state.get(MISSING_COLUMNS) or []]
        return found + [c for k, v in state.items() if k != MISSING_COLUMNS for c in missing_columns(v)]
    if isinstance(state, list):
        return [c for v in state for c in missing_columns(v)]
    return []


SUPPORTED_MAJOR = SCHEMA_VERSION.split(".", 1)[0]


def check_schema_version(version: Any) -> None:
    if not isinstance(version, str) or version.split(".", 1)[0] != SUPPORTED_MAJOR:
        raise UnknownSchemaVersion(
            f"schema_version {version!r} is not supported (this consumer reads {SUPPORTED_MAJOR}.x)"
        )


def decode_event(value: bytes | None) -> EventEnvelope:
    """Parse a record value into an envelope whose payload also validates against its model."""
    if value is None:
        raise EventDecodeError("record has no value (tombstone)")
    try:
        raw = json.loads(value)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, 4,300+ digit ints
        raise EventDecodeError(f"record value is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise EventDecodeError(f"record value is JSON {type(raw).__name__}, not an object")
    check_schema_version(raw.get("schema_version"))
    try:
        envelope = EventEnvelope.model_validate(raw)
    except ValidationError as exc:
        raise EventDecodeError(f"envelope invalid: {_short(exc)}") from exc
    if envelope.event_type.split(".", 1)[0] != envelope.aggregate_type:
        raise EventDecodeError(f"event_type {envelope.event_type} does not match {envelope.aggregate_type}")
    if gone := sorted(set(missing_columns(envelope.payload))):
        raise CapturedSchemaDrift(
            f"TimeTracker's row had no column {', '.join(gone)} (renamed or dropped by an upgrade?): this "
            f"{envelope.aggregate_type} cannot be synced from it. Run `ttsync capture check`, adapt ttsync, then "
            "replay this dead letter")
    try:
        envelope.state()
    except ValidationError as exc:
        raise InvalidPayload(f"{envelope.aggregate_type} payload invalid: {_short(exc)}") from exc
    return envelope


def encode_event(envelope: EventEnvelope) -> bytes:
    return envelope.model_dump_json().encode()


def record_headers(event_id: str, event_type: str, aggregate_version: int,
                   schema_version: str = SCHEMA_VERSION) -> list[tuple[str, bytes]]:
    """The headers of an event's record, as the relay sets them (a Debezium EventRouter can be configured to set
    the same)."""
    return [
        (Header.EVENT_ID, event_id.encode()),
        (Header.EVENT_TYPE, event_type.encode()),
        (Header.AGGREGATE_VERSION, str(aggregate_version).encode()),
        (Header.SCHEMA_VERSION, schema_version.encode()),
    ]


def headers_to_dict(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Decode Kafka headers to text; the last value wins when a name repeats."""
    out: dict[str, str] = {}
    for name, value in headers or ():
        out[name] = value.decode("utf-8", "replace") if value is not None else ""
    return out


def header_list(headers: Mapping[str, str]) -> list[tuple[str, bytes]]:
    return [(k, v.encode()) for k, v in headers.items()]


def _short(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:5]]
    more = "" if exc.error_count() <= 5 else f" (+{exc.error_count() - 5} more)"
    return "; ".join(parts) + more
