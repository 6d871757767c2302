"""ttsync's own tables in the TimeTracker database: the outbox and the per-aggregate version counter.

``ttsync_outbox`` follows Debezium's Outbox Event Router layout (``id``, ``aggregatetype``, ``aggregateid``,
``type``, ``payload``) so that Debezium can read the same table; the other columns serve our polling relay.
The payload column holds the whole event envelope, which is what a record's value carries.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

TTSYNC_METADATA = MetaData()

JsonDoc = JSON().with_variant(JSONB(), "postgresql")
SeqInt = BigInteger().with_variant(Integer(), "sqlite")

outbox = Table(
    "ttsync_outbox",
    TTSYNC_METADATA,
    Column("id", Uuid(), primary_key=True, comment="event id; Kafka header 'id'"),
    Column("seq", SeqInt, Identity(always=False), nullable=False, unique=True, comment="insertion order"),
    Column("aggregatetype", String(255), nullable=False, comment="routes the record to <prefix>.<type>"),
    Column("aggregateid", String(255), nullable=False, comment="Kafka record key"),
    Column("type", String(255), nullable=False, comment="event type, e.g. invoice.updated"),
    Column("payload", JsonDoc, nullable=False, comment="the event envelope, the record value"),
    Column("aggregate_version", BigInteger, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("headers", JsonDoc, nullable=True, comment="extra record headers (trace ids)"),
    Column("origin", String(64), nullable=True, comment="who made the change (header ttsync.origin); the importer's "
           "are not sent back to QBO"),
    Column("published_at", DateTime(timezone=True), nullable=True),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("last_error", Text, nullable=True),
    Column("available_at", DateTime(timezone=True), nullable=True, comment="retry not before (after a failure)"),
)
Index(
    "ix_ttsync_outbox_unpublished",
    outbox.c.seq,
    postgresql_where=outbox.c.published_at.is_(None),
    sqlite_where=outbox.c.published_at.is_(None),
)
Index(
    "ix_ttsync_outbox_unpublished_aggregate",
    outbox.c.aggregatetype,
    outbox.c.aggregateid,
    outbox.c.seq,
    postgresql_where=outbox.c.published_at.is_(None),
    sqlite_where=outbox.c.published_at.is_(None),
)
Index("ix_ttsync_outbox_published_at", outbox.c.published_at)
Index(
    "ix_ttsync_outbox_delayed",
    outbox.c.aggregatetype,
    outbox.c.aggregateid,
    outbox.c.seq,
    postgresql_where=outbox.c.published_at.is_(None) & outbox.c.available_at.is_not(None),
    sqlite_where=outbox.c.published_at.is_(None) & outbox.c.available_at.is_not(None),
)

aggregate_versions = Table(
    "ttsync_aggregate_versions",
    TTSYNC_METADATA,
    Column("aggregatetype", String(255), primary_key=True),
    Column("aggregateid", String(255), primary_key=True),
    Column("version", BigInteger, nullable=False),
)

snapshot_progress = Table(
    "ttsync_snapshot_progress",
    TTSYNC_METADATA,
    Column("run_id", String(64), primary_key=True, comment="one `ttsync capture snapshot` run"),
    Column("aggregatetype", String(255), primary_key=True),
    Column("since", DateTime(timezone=True), nullable=True, comment="records changed since (None: all)"),
    Column("last_id", BigInteger, nullable=False, server_default=text("0"), comment="highest id enqueued"),
    Column("enqueued", BigInteger, nullable=False, server_default=text("0")),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
)

# The import direction (QBO -> TimeTracker) keeps its state here, beside what it writes: the TimeTracker rows it
# made and what the QBO entity was when it made them, in the same transaction as the rows themselves.
import_links = Table(
    "ttsync_import_links",
    TTSYNC_METADATA,
    Column("realm_id", String(64), primary_key=True),
    Column("qbo_entity", String(64), primary_key=True, comment="e.g. Payment"),
    Column("qbo_id", String(64), primary_key=True),
    Column("qbo_invoice_id", String(64), primary_key=True, comment="the invoice a payment line paid"),
    Column("tt_payment_id", BigInteger, nullable=True, comment="the TimeTracker payments row (None: reversed)"),
    Column("tt_invoice_id", BigInteger, nullable=False),
    Column("amount", String(32), nullable=False, comment="decimal text: what the TimeTracker row holds"),
    Column("sync_token", BigInteger, nullable=False, comment="the QBO SyncToken applied (older ones are skipped)"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
