"""the import direction: which TimeTracker payment a QBO payment line became, at which SyncToken (links); how far
the CDC poller got (cursor)

Revision ID: 0006_import_links
Revises: 0005_own_schema
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_import_links"
down_revision = "0005_own_schema"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ttsync_import_links",
        sa.Column("realm_id", sa.String(64), primary_key=True),
        sa.Column("qbo_entity", sa.String(64), primary_key=True),
        sa.Column("qbo_id", sa.String(64), primary_key=True),
        sa.Column("qbo_invoice_id", sa.String(64), primary_key=True),
        sa.Column("tt_payment_id", sa.BigInteger, nullable=True),
        sa.Column("tt_invoice_id", sa.BigInteger, nullable=False),
        sa.Column("amount", sa.String(32), nullable=False),
        sa.Column("sync_token", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "ttsync_import_cursor",
        sa.Column("realm_id", sa.String(64), primary_key=True),
        sa.Column("changed_since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("polled_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ttsync_import_cursor")
    op.drop_table("ttsync_import_links")
