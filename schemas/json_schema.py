"""Export the contract as JSON Schema, one file per event type, for consumers not written in Python."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.contract import AGGREGATE_TYPES, EVENT_ACTIONS, SCHEMA_VERSION
from schemas.events import PAYLOAD_MODELS, EventEnvelope


def event_schema(aggregate_type: str, action: str) -> dict[str, Any]:
    envelope = EventEnvelope.model_json_schema(mode="serialization")
    payload = PAYLOAD_MODELS[aggregate_type].model_json_schema(mode="serialization")
    defs = {**envelope.pop("$defs", {}), **payload.pop("$defs", {})}
    props = dict(envelope["properties"])
    props["event_type"] = {"const": f"{aggregate_type}.{action}", "type": "string"}
    props["aggregate_type"] = {"const": aggregate_type, "type": "string"}
    props["payload"] = payload
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://ttsync.dev/schemas/{SCHEMA_VERSION}/{aggregate_type}.{action}.json",
        "title": f"{aggregate_type}.{action}",
        "description": f"ttsync event {aggregate_type}.{action}, schema_version {SCHEMA_VERSION}",
        "type": "object",
        "properties": props,
        "required": envelope.get("required", []),
    }
    if defs:
        schema["$defs"] = defs
    return schema


def export_json_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for aggregate_type in AGGREGATE_TYPES:
        for action in EVENT_ACTIONS:
            path = directory / f"{aggregate_type}.{action}.json"
            path.write_text(json.dumps(event_schema(aggregate_type, action), indent=2, sort_keys=True) + "\n")
            written.append(path)
    return written
