"""consumer state: processed events, entity map, resolved references, OAuth tokens, rate budget

Revision ID: 0002_consumer_state
Revises: 0001_outbox
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_consumer_state"
down_revision = "0001_outbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ttsync_processed_events",
        sa.Column("consumer_group", sa.String(255), primary_key=True),
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("aggregate_type", sa.String(64), nullable=False),
        sa.Column("aggregate_id", sa.String(255), nullable=False),
        sa.Column("aggregate_version", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("qbo_id", sa.String(64), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_ttsync_processed_events_at", "ttsync_processed_events", ["processed_at"])
    op.create_table(
        "ttsync_entity_map",
        sa.Column("realm_id", sa.String(64), primary_key=True),
        sa.Column("aggregate_type", sa.String(64), primary_key=True),
        sa.Column("aggregate_id", sa.String(255), primary_key=True),
        sa.Column("qbo_entity", sa.String(32), nullable=False),
        sa.Column("qbo_id", sa.String(64), nullable=True),
        sa.Column("sync_token", sa.String(32), nullable=True),
        sa.Column("last_version", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("qbo_status", sa.String(16), nullable=False, server_default="active"),
        sa.Column("customer_ref", sa.String(64), nullable=True),
        sa.Column("pending_requestid", sa.String(64), nullable=True),
        sa.Column("pending_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_ttsync_entity_map_qbo", "ttsync_entity_map", ["realm_id", "qbo_entity", "qbo_id"])
    op.create_table(
        "ttsync_qbo_refs",
        sa.Column("realm_id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("key", sa.String(500), primary_key=True),
        sa.Column("qbo_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(500), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "ttsync_oauth_tokens",
        sa.Column("realm_id", sa.String(64), primary_key=True),
        sa.Column("refresh_token_enc", sa.Text(), nullable=False),
        sa.Column("access_token_enc", sa.Text(), nullable=True),
        sa.Column("access_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("refresh_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("seed_fingerprint", sa.String(64), nullable=True),
        sa.Column("rotations", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "ttsync_rate_budget",
        sa.Column("realm_id", sa.String(64), primary_key=True),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    for table in ("ttsync_rate_budget", "ttsync_oauth_tokens", "ttsync_qbo_refs", "ttsync_entity_map",
                  "ttsync_processed_events"):
        op.drop_table(table)
