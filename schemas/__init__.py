"""ttsync's event contract: envelope and payload models, topic and header names, codec, JSON Schema."""

from schemas.codec import (
    EventDecodeError,
    InvalidPayload,
    UnknownSchemaVersion,
    decode_event,
    encode_event,
    headers_to_dict,
    record_headers,
)
from schemas.contract import (
    AGGREGATE_TYPES,
    SCHEMA_VERSION,
    Header,
    all_topics,
    dlq_topic,
    retry_topic,
    topic_for,
)
from schemas.events import (
    PAYLOAD_MODELS,
    ClientState,
    EventEnvelope,
    ExpenseState,
    InvoiceItemState,
    InvoiceState,
    PaymentState,
)

__all__ = [
    "AGGREGATE_TYPES",
    "PAYLOAD_MODELS",
    "SCHEMA_VERSION",
    "ClientState",
    "EventDecodeError",
    "EventEnvelope",
    "ExpenseState",
    "Header",
    "InvalidPayload",
    "InvoiceItemState",
    "InvoiceState",
    "PaymentState",
    "UnknownSchemaVersion",
    "all_topics",
    "decode_event",
    "dlq_topic",
    "encode_event",
    "headers_to_dict",
    "record_headers",
    "retry_topic",
    "topic_for",
]
