"""Names shared by every producer and consumer of ttsync events: topics, headers, groups, versions.

One place, so that the relay, the consumer, the operator tools and a Debezium configuration agree.
"""

from __future__ import annotations

import re
from typing import Final

SCHEMA_VERSION: Final = "1.0"
"""Version of the envelope and payloads. Consumers accept any 1.x and reject other majors."""

AGGREGATE_TYPES: Final = ("invoice", "expense", "payment", "client")
EVENT_ACTIONS: Final = ("created", "updated", "deleted", "snapshot")

DEFAULT_TOPIC_PREFIX: Final = "timetracker"
RETRY_SUFFIX: Final = ".retry"
"""Retry topics are ``<topic>.retry.<delay seconds>s``, e.g. ``timetracker.invoice.retry.30s``."""
DLQ_SUFFIX: Final = ".dlq"
"""All dead-lettered records of a prefix go to one topic, ``<prefix>.dlq``, keyed as the original."""

DEFAULT_CONSUMER_GROUP: Final = "ttsync-qbo"
DLQ_REPLAY_GROUP_SUFFIX: Final = "-dlq-replay"


def topic_for(aggregate_type: str, prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    """Topic of an aggregate type: what Debezium's EventRouter gives with
    ``route.topic.replacement=<prefix>.${routedByValue}``."""
    return f"{prefix}.{aggregate_type}"


def all_topics(prefix: str = DEFAULT_TOPIC_PREFIX) -> list[str]:
    return [topic_for(t, prefix) for t in AGGREGATE_TYPES]


QBO_CHANGES_SUFFIX: Final = ".qbo.changes"
"""The import direction's topic, ``<prefix>.qbo.changes``: one record per QBO entity change (webhook or CDC),
keyed ``<realm>:<entity>:<id>``."""
IMPORT_GROUP_SUFFIX: Final = "-import"
ORIGIN_QBO_IMPORT: Final = "qbo-import"
"""The ``ttsync.origin`` of a TimeTracker change the importer made: capture marks it, the export consumer skips it
(it came from QBO; sending it back would echo)."""


def qbo_changes_topic(prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    return f"{prefix}{QBO_CHANGES_SUFFIX}"


def dlq_topic(prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    return f"{prefix}{DLQ_SUFFIX}"


def retry_topic(topic: str, delay_s: int) -> str:
    return f"{topic}{RETRY_SUFFIX}.{delay_s}s"


_RETRY_TOPIC = re.compile(rf"^(?P<base>.+){re.escape(RETRY_SUFFIX)}\.(?P<delay>\d+)s$")


def parse_retry_topic(topic: str) -> tuple[str, int] | None:
    """``retry_topic``'s inverse: (the topic it retries, its delay in seconds), or None for any other topic."""
    m = _RETRY_TOPIC.match(topic)
    return (m.group("base"), int(m.group("delay"))) if m else None


class Header:
    """Kafka record header names. Values are UTF-8 text (numbers as decimal strings)."""

    # Set by the relay, and by Debezium's EventRouter (table.field.event.id / additional.placement).
    EVENT_ID: Final = "id"
    EVENT_TYPE: Final = "eventType"
    AGGREGATE_VERSION: Final = "aggregateVersion"
    SCHEMA_VERSION: Final = "schemaVersion"
    TRACE_ID: Final = "traceId"
    # From the outbox row's headers (capture): which side made the change; ORIGIN_QBO_IMPORT for the importer's.
    ORIGIN: Final = "ttsync.origin"

    # Added when a record is forwarded to a retry topic or the dead-letter topic, in the spirit of
    # Kafka Connect's __connect.errors.* and Spring's kafka_dlt-* headers.
    PREFIX: Final = "ttsync.errors."
    ORIGINAL_TOPIC: Final = PREFIX + "original.topic"
    ORIGINAL_PARTITION: Final = PREFIX + "original.partition"
    ORIGINAL_OFFSET: Final = PREFIX + "original.offset"
    ORIGINAL_TIMESTAMP: Final = PREFIX + "original.timestamp"
    CONSUMER_GROUP: Final = PREFIX + "consumer.group"
    ERROR_CLASS: Final = PREFIX + "class.name"
    ERROR_MESSAGE: Final = PREFIX + "message"
    ERROR_CODE: Final = PREFIX + "code"
    QBO_FAULT_CODE: Final = PREFIX + "qbo.fault.code"
    QBO_FAULT_BODY: Final = PREFIX + "qbo.fault.body"
    ATTEMPTS: Final = PREFIX + "attempts"
    FIRST_FAILURE: Final = PREFIX + "first.failure"
    LAST_FAILURE: Final = PREFIX + "last.failure"
    RETRY_DUE_AT: Final = PREFIX + "retry.due.at"
    REPLAY_COUNT: Final = "ttsync.replay.count"

    # Kafka Connect's dead-letter header names (errors.deadletterqueue.context.headers.enable), written beside
    # ours so that Kafka UIs that decode Connect's DLQs decode ttsync's too.
    CONNECT_PREFIX: Final = "__connect.errors."
    CONNECT_ALIASES: Final = {
        ORIGINAL_TOPIC: CONNECT_PREFIX + "topic",
        ORIGINAL_PARTITION: CONNECT_PREFIX + "partition",
        ORIGINAL_OFFSET: CONNECT_PREFIX + "offset",
        ERROR_CLASS: CONNECT_PREFIX + "exception.class.name",
        ERROR_MESSAGE: CONNECT_PREFIX + "exception.message",
    }

MISSING_COLUMNS: Final = "_missing_columns"
"""Key of a state that lists the ``table.column`` capture could not read (TimeTracker renamed or dropped it)."""


def dlq_topic_configs(retention_days: float) -> dict[str, str]:
    """The dead-letter topic keeps its records this long, whatever the broker's default (7 days would expire dead
    letters an operator has not looked at yet); 0 or less keeps them forever."""
    ms = int(retention_days * 86_400_000) if retention_days > 0 else -1
    return {"retention.ms": str(ms), "cleanup.policy": "delete"}
