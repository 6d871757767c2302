"""The importer's TimeTracker transactions are marked as its own, so that capture tags their events and the export
consumer does not send them back to QBO (an echo)."""

from __future__ import annotations

from sqlalchemy import Connection, text

from producer.session_capture import ORIGIN_INFO_KEY
from schemas.contract import ORIGIN_QBO_IMPORT


def marked_as_import(conn: Connection) -> None:
    """The capture triggers read ``ttsync.origin`` (set for this transaction only); SQLAlchemy capture reads the
    session's info. Call it first in the transaction."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT set_config('ttsync.origin', :o, true)"), {"o": ORIGIN_QBO_IMPORT})
    conn.info[ORIGIN_INFO_KEY] = ORIGIN_QBO_IMPORT
