"""Zero-code capture: PostgreSQL triggers on TimeTracker's own tables write the outbox.

How it works (all inside the application's transaction):

1. A BEFORE row trigger on every captured table notes the aggregate the row belongs to (the invoice for an
   item), once per transaction: it locks the aggregate's root row (so concurrent transactions on one
   aggregate commit one after the other and versions follow commit order) and keeps the aggregate's state
   *before* the transaction touched it in ``ttsync_capture_pending``.
2. A deferred constraint trigger on ``ttsync_capture_pending`` runs at commit time, once per aggregate: it
   builds the committed state and writes one outbox row, ``created`` (no state before), ``deleted`` (no
   state after; the payload is the last state), ``updated`` (both, and they differ), or nothing.
   So an invoice inserted with its items is one event carrying all items.
3. ``pg_notify('ttsync_outbox')`` wakes the relay when the transaction commits.
"""

from __future__ import annotations

import re
from importlib import resources

from sqlalchemy import Connection, text

from producer.aggregate_snapshots import AGGREGATES, TABLE_TO_AGGREGATES, snapshot_function_sql
from producer.database import enter_schema
from schemas.contract import SCHEMA_VERSION

NOTIFY_CHANNEL = "ttsync_outbox"


def _dispatch_sql() -> str:
    branches = "\n".join(
        f"    WHEN '{t}' THEN RETURN ttsync_snapshot_{t}(p_id::bigint);" for t in AGGREGATES
    )
    locks = "\n".join(
        f"    WHEN '{t}' THEN PERFORM 1 FROM \"{a.root.table}\" WHERE \"id\" = p_id::bigint FOR NO KEY UPDATE;"
        for t, a in AGGREGATES.items()
    )
    return f"""
CREATE OR REPLACE FUNCTION ttsync_snapshot(p_type text, p_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path FROM CURRENT AS $fn$
BEGIN
  CASE p_type
{branches}
    ELSE RAISE EXCEPTION 'ttsync: unknown aggregate type %', p_type;
  END CASE;
END
$fn$;

CREATE OR REPLACE FUNCTION ttsync_lock_root(p_type text, p_id text) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $fn$
BEGIN
  CASE p_type
{locks}
    ELSE RAISE EXCEPTION 'ttsync: unknown aggregate type %', p_type;
  END CASE;
END
$fn$;
"""


SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _core_sql(source: str) -> str:
    if not SOURCE_RE.match(source):
        raise ValueError(f"capture source {source!r}: letters, digits, '.', '_' and '-' only (it names this "
                         "TimeTracker in every event and in QBO markers)")
    template = resources.files("producer").joinpath("capture_core.sql").read_text()
    return template % {"schema_version": SCHEMA_VERSION, "source": source, "notify_channel": NOTIFY_CHANNEL}


def _table_triggers_sql() -> str:
    out = []
    for table, targets in TABLE_TO_AGGREGATES.items():
        for agg_type, column in targets:
            name = f"ttsync_capture_{table}_{agg_type}"
            out.append(f'DROP TRIGGER IF EXISTS {name} ON "{table}";')
            out.append(
                f'CREATE TRIGGER {name} BEFORE INSERT OR UPDATE OR DELETE ON "{table}" '
                f"FOR EACH ROW EXECUTE FUNCTION ttsync_capture_row('{agg_type}', '{column}');"
            )
    return "\n".join(out)


def install_sql(source: str = "timetracker") -> str:
    functions = "\n".join(snapshot_function_sql(a) for a in AGGREGATES.values())
    return "\n".join([functions, _dispatch_sql(), _core_sql(source), _table_triggers_sql()])


def uninstall_sql() -> str:
    out = []
    for table, targets in TABLE_TO_AGGREGATES.items():
        for agg_type, _ in targets:
            out.append(f'DROP TRIGGER IF EXISTS ttsync_capture_{table}_{agg_type} ON "{table}";')
    out += [
        "DROP TABLE IF EXISTS ttsync_capture_pending;",
        "DROP FUNCTION IF EXISTS ttsync_capture_flush();",
        "DROP FUNCTION IF EXISTS ttsync_capture_row();",
        "DROP FUNCTION IF EXISTS ttsync_capture_note(text, text);",
        "DROP FUNCTION IF EXISTS ttsync_lock_root(text, text);",
        "DROP FUNCTION IF EXISTS ttsync_snapshot(text, text);",
    ]
    out += [f"DROP FUNCTION IF EXISTS ttsync_snapshot_{t}(bigint);" for t in AGGREGATES]
    return "\n".join(out)


class CaptureNotSupported(RuntimeError):
    pass


def _require_postgres(conn: Connection) -> None:
    if conn.dialect.name != "postgresql":
        raise CaptureNotSupported(
            f"trigger capture needs PostgreSQL, this database is {conn.dialect.name}; "
            "use the SQLAlchemy session capture (producer.session_capture.install_session_capture) instead"
        )


def _run_script(conn: Connection, sql: str) -> None:
    # Straight to the driver, in the caller's transaction: the script holds '%' that a paramstyle would eat.
    with conn.connection.dbapi_connection.cursor() as cur:  # type: ignore[union-attr]
        cur.execute(sql)


def install_triggers(conn: Connection, source: str = "timetracker") -> list[str]:
    """Install (or replace) the capture triggers; returns the tables now captured. Idempotent. The functions and
    the pending table go to ttsync's schema; each function keeps the search path it was made with, so that it
    finds ttsync's tables and TimeTracker's whatever the search path of TimeTracker's sessions."""
    _require_postgres(conn)
    enter_schema(conn)
    _run_script(conn, install_sql(source))
    return sorted(TABLE_TO_AGGREGATES)


def uninstall_triggers(conn: Connection) -> None:
    _require_postgres(conn)
    enter_schema(conn)
    _run_script(conn, uninstall_sql())


def installed_triggers(conn: Connection) -> list[str]:
    if conn.dialect.name != "postgresql":
        return []
    rows = conn.execute(
        text("SELECT tgname FROM pg_trigger WHERE tgname LIKE 'ttsync_capture_%' AND NOT tgisinternal")
    )
    return sorted(r[0] for r in rows)
