"""ttsync's event contract: envelope and payload models, topic and header names, codec, JSON Schema.

The names are loaded on first use: capture runs inside TimeTracker's process and needs only
``schemas.contract``, so importing it must not bring in pydantic (the models and the codec) with it.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    **dict.fromkeys(("EventDecodeError", "InvalidPayload", "UnknownSchemaVersion", "decode_event", "encode_event",
                     "headers_to_dict", "record_headers"), "schemas.codec"),
    **dict.fromkeys(("AGGREGATE_TYPES", "SCHEMA_VERSION", "Header", "all_topics", "dlq_topic", "retry_topic",
                     "topic_for"), "schemas.contract"),
    **dict.fromkeys(("PAYLOAD_MODELS", "ClientState", "EventEnvelope", "ExpenseState", "InvoiceItemState",
                     "InvoiceState", "PaymentState"), "schemas.events"),
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'schemas' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
