"""ttsync_outbox and ttsync_aggregate_versions

Revision ID: 0001_outbox
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001_outbox"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    json_doc = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    seq_int = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "ttsync_outbox",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("seq", seq_int, sa.Identity(always=False), nullable=False, unique=True),
        sa.Column("aggregatetype", sa.String(255), nullable=False),
        sa.Column("aggregateid", sa.String(255), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("payload", json_doc, nullable=False),
        sa.Column("aggregate_version", sa.BigInteger(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("headers", json_doc, nullable=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("available_at", sa.DateTime(timezone=True), nullable=True),
    )
    unpublished = sa.text("published_at IS NULL")
    op.create_index(
        "ix_ttsync_outbox_unpublished", "ttsync_outbox", ["seq"],
        postgresql_where=unpublished, sqlite_where=unpublished,
    )
    op.create_index(
        "ix_ttsync_outbox_unpublished_aggregate", "ttsync_outbox", ["aggregatetype", "aggregateid", "seq"],
        postgresql_where=unpublished, sqlite_where=unpublished,
    )
    op.create_index("ix_ttsync_outbox_published_at", "ttsync_outbox", ["published_at"])
    op.create_table(
        "ttsync_aggregate_versions",
        sa.Column("aggregatetype", sa.String(255), primary_key=True),
        sa.Column("aggregateid", sa.String(255), primary_key=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ttsync_aggregate_versions")
    op.drop_table("ttsync_outbox")
