"""ttsync_outbox.origin: who made the change (``ttsync.origin``), a column so that Debezium's EventRouter can place
it as a header as the polling relay does (the importer's changes are not sent back to QBO)

Revision ID: 0007_outbox_origin
Revises: 0006_import_links
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_outbox_origin"
down_revision = "0006_import_links"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ttsync_outbox", sa.Column("origin", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("ttsync_outbox", "origin")
