"""The consumer's state tables (created by the migrations, 0002 on): SQLAlchemy Core descriptions for queries."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Float, Integer, MetaData, String, Table, Text

STATE_METADATA = MetaData()

processed_events = Table(
    "ttsync_processed_events", STATE_METADATA,
    Column("consumer_group", String(255), primary_key=True),
    Column("event_id", String(36), primary_key=True),
    Column("aggregate_type", String(64), nullable=False),
    Column("aggregate_id", String(255), nullable=False),
    Column("aggregate_version", BigInteger, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("qbo_id", String(64)),
    Column("processed_at", DateTime(timezone=True), nullable=False),
)

# Versions this group dead-lettered (migration 0008): a later version whose fate depends on one of them (an overdue
# invoice: was it ever sent?) is dead-lettered at once, with that reason, rather than waiting for it in the retry
# topics. A row older than the entity map's last version is history (the version was replayed and settled).
dead_lettered = Table(
    "ttsync_dead_lettered", STATE_METADATA,
    Column("consumer_group", String(255), primary_key=True),
    Column("aggregate_type", String(64), primary_key=True),
    Column("aggregate_id", String(255), primary_key=True),
    Column("aggregate_version", BigInteger, primary_key=True),
    Column("event_id", String(36), nullable=False),
    Column("reason", String(500), nullable=False),
    Column("dead_lettered_at", DateTime(timezone=True), nullable=False),
)

entity_map = Table(
    "ttsync_entity_map", STATE_METADATA,
    Column("realm_id", String(64), primary_key=True),
    Column("aggregate_type", String(64), primary_key=True),
    Column("aggregate_id", String(255), primary_key=True),
    Column("qbo_entity", String(32), nullable=False),
    Column("qbo_id", String(64)),
    Column("sync_token", String(32)),
    Column("last_version", BigInteger, nullable=False, default=0),
    Column("qbo_status", String(16), nullable=False, default="active"),
    Column("customer_ref", String(64)),
    Column("pending_requestid", String(64)),
    Column("pending_since", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

qbo_refs = Table(
    "ttsync_qbo_refs", STATE_METADATA,
    Column("realm_id", String(64), primary_key=True),
    Column("kind", String(32), primary_key=True),
    Column("key", String(500), primary_key=True),
    Column("qbo_id", String(64), nullable=False),
    Column("name", String(500)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

oauth_tokens = Table(
    "ttsync_oauth_tokens", STATE_METADATA,
    Column("realm_id", String(64), primary_key=True),
    Column("refresh_token_enc", Text, nullable=False),
    Column("access_token_enc", Text),
    Column("access_expires_at", DateTime(timezone=True)),
    Column("refresh_expires_at", DateTime(timezone=True)),
    Column("seed_fingerprint", String(64)),
    Column("rotations", Integer, nullable=False, default=0),
    Column("last_success_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

rate_budget = Table(
    "ttsync_rate_budget", STATE_METADATA,
    Column("realm_id", String(64), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

import_cursor = Table(
    "ttsync_import_cursor", STATE_METADATA,
    Column("realm_id", String(64), primary_key=True),
    Column("changed_since", DateTime(timezone=True), nullable=False),  # the next CDC call asks from here
    Column("polled_at", DateTime(timezone=True), nullable=False),
)
