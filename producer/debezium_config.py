"""The Debezium relay's connector configuration: the same outbox, the same Kafka records as `ttsync relay`.

Debezium's PostgreSQL connector reads ``ttsync_outbox`` inserts from the write-ahead log (pgoutput, a
publication on that one table) and its Outbox Event Router turns each row into the record our consumer
expects: topic ``<prefix>.<aggregatetype>``, key ``aggregateid``, value the ``payload`` column (the event
envelope, as text), headers ``id``, ``eventType`` and ``aggregateVersion`` from the row and ``schemaVersion``
from an InsertHeader step. ``snapshot.mode=no_data``: rows already in the table are the polling relay's to
publish (see the cut-over in the README); Debezium takes over from the moment its slot exists.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.engine import make_url

from producer.database import ttsync_schema
from schemas.contract import SCHEMA_VERSION, Header


def default_slot(database: str) -> str:
    """``ttsync_outbox_<database>``: replication slots are per server, so two TimeTracker databases on one
    server need two names (lowercase letters, digits and _, at most 63 characters)."""
    name = re.sub(r"[^a-z0-9_]", "_", database.lower())
    return f"ttsync_outbox_{name}"[:63]


def connector_config(database_url: str, topic_prefix: str, *, slot: str | None = None,
                     password_file: str | None = None, publication_exists: bool = False) -> dict[str, Any]:
    """``publication_exists``: the publication was made by the table's owner (``ttsync outbox cdc-role``), so the
    connector's role needs no right to make one."""
    url = make_url(database_url)
    slot = slot or default_slot(url.database or "postgres")
    password: str = url.password or ""
    if password_file:
        # Kafka Connect's FileConfigProvider: the secret stays out of the REST API and the config topic.
        password = f"${{file:{password_file}:password}}"
    return {
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "tasks.max": "1",
        "plugin.name": "pgoutput",
        "database.hostname": url.host or "127.0.0.1",
        "database.port": str(url.port or 5432),
        "database.user": url.username or "postgres",
        "database.password": password,
        "database.dbname": url.database or "postgres",
        "topic.prefix": f"{topic_prefix}-cdc",
        "table.include.list": f"{ttsync_schema()}.ttsync_outbox",
        "slot.name": slot,
        "publication.name": slot,
        "publication.autocreate.mode": "disabled" if publication_exists else "filtered",
        "snapshot.mode": "no_data",
        "tombstones.on.delete": "false",
        "heartbeat.interval.ms": "10000",
        # Debezium waits poll.interval.ms (500 by default) when the WAL has nothing new: 50 keeps commit-to-Kafka
        # latency near the polling relay's at the cost of a few idle wake-ups a second.
        "poll.interval.ms": "50",
        "transforms": "outbox,schemaVersion",
        "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
        "transforms.outbox.table.field.event.id": "id",
        "transforms.outbox.table.field.event.key": "aggregateid",
        "transforms.outbox.table.field.event.payload": "payload",
        "transforms.outbox.table.fields.additional.placement": f"type:header:{Header.EVENT_TYPE},"
                                                                f"origin:header:{Header.ORIGIN},"
                                                                f"aggregate_version:header:{Header.AGGREGATE_VERSION}",
        "transforms.outbox.route.by.field": "aggregatetype",
        "transforms.outbox.route.topic.replacement": f"{topic_prefix}.${{routedByValue}}",
        "transforms.outbox.route.tombstone.on.empty.payload": "false",
        "transforms.schemaVersion.type": "org.apache.kafka.connect.transforms.InsertHeader",
        "transforms.schemaVersion.header": "schemaVersion",
        "transforms.schemaVersion.value.literal": SCHEMA_VERSION,
        "key.converter": "org.apache.kafka.connect.storage.StringConverter",
        "value.converter": "org.apache.kafka.connect.storage.StringConverter",
        "header.converter": "org.apache.kafka.connect.storage.StringConverter",
    }
