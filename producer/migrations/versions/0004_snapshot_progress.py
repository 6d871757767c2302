"""how far each `ttsync capture snapshot` run got, per aggregate type (a killed run resumes from here)

Revision ID: 0004_snapshot_progress
Revises: 0003_outbox_delayed_index
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_snapshot_progress"
down_revision = "0003_outbox_delayed_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ttsync_snapshot_progress",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("aggregatetype", sa.String(255), primary_key=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_id", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("enqueued", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("ttsync_snapshot_progress")
