"""index of outbox rows waiting after a failed publish (the relay's hold-back check stays cheap)

Revision ID: 0003_outbox_delayed_index
Revises: 0002_consumer_state
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_outbox_delayed_index"
down_revision = "0002_consumer_state"
branch_labels = None
depends_on = None


def upgrade() -> None:
    delayed = sa.text("published_at IS NULL AND available_at IS NOT NULL")
    op.create_index("ix_ttsync_outbox_delayed", "ttsync_outbox", ["aggregatetype", "aggregateid", "seq"],
                    postgresql_where=delayed, sqlite_where=delayed)


def downgrade() -> None:
    op.drop_index("ix_ttsync_outbox_delayed", "ttsync_outbox")
