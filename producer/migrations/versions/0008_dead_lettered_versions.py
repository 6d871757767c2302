"""ttsync_dead_lettered: which versions of an aggregate a consumer group dead-lettered, so that a later version
whose fate depends on one of them is dead-lettered with that reason at once, instead of waiting in the retry
topics for hours for a version that will never come

Revision ID: 0008_dead_lettered_versions
Revises: 0007_outbox_origin
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_dead_lettered_versions"
down_revision = "0007_outbox_origin"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ttsync_dead_lettered",
        sa.Column("consumer_group", sa.String(255), primary_key=True),
        sa.Column("aggregate_type", sa.String(64), primary_key=True),
        sa.Column("aggregate_id", sa.String(255), primary_key=True),
        sa.Column("aggregate_version", sa.BigInteger, primary_key=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("dead_lettered_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ttsync_dead_lettered")
