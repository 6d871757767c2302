"""Writing one outbox row from Python, in the caller's transaction (the SQLAlchemy capture path)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Connection, func, insert, select, text, update

from producer.outbox_tables import aggregate_versions, outbox
from producer.trigger_capture import NOTIFY_CHANNEL
from schemas.contract import SCHEMA_VERSION


def build_envelope(
    *,
    event_id: uuid.UUID,
    aggregate_type: str,
    aggregate_id: str,
    action: str,
    version: int,
    occurred_at: dt.datetime,
    source: str,
    payload: dict[str, Any],
) -> dict[str, Any]:
    return {
        "event_id": str(event_id),
        "event_type": f"{aggregate_type}.{action}",
        "aggregate_type": aggregate_type,
        "aggregate_id": aggregate_id,
        "aggregate_version": version,
        "occurred_at": occurred_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "payload": payload,
    }


def next_version(conn: Connection, aggregate_type: str, aggregate_id: str) -> int:
    """Increment and return the aggregate's version; the row lock it takes orders concurrent writers."""
    key = {"aggregatetype": aggregate_type, "aggregateid": aggregate_id}
    if conn.dialect.name == "postgresql":
        return int(
            conn.execute(
                text(
                    "INSERT INTO ttsync_aggregate_versions AS v (aggregatetype, aggregateid, version) "
                    "VALUES (:aggregatetype, :aggregateid, 1) ON CONFLICT (aggregatetype, aggregateid) "
                    "DO UPDATE SET version = v.version + 1 RETURNING v.version"
                ),
                key,
            ).scalar_one()
        )
    # SQLite: one writer at a time, so read-then-write is safe inside the transaction.
    current = conn.execute(
        select(aggregate_versions.c.version).where(
            aggregate_versions.c.aggregatetype == aggregate_type,
            aggregate_versions.c.aggregateid == aggregate_id,
        )
    ).scalar()
    if current is None:
        conn.execute(insert(aggregate_versions).values(**key, version=1))
        return 1
    conn.execute(
        update(aggregate_versions)
        .where(
            aggregate_versions.c.aggregatetype == aggregate_type,
            aggregate_versions.c.aggregateid == aggregate_id,
        )
        .values(version=current + 1)
    )
    return int(current) + 1


def write_event(
    conn: Connection,
    *,
    aggregate_type: str,
    aggregate_id: str,
    action: str,
    payload: dict[str, Any],
    source: str,
    headers: dict[str, Any] | None = None,
    event_type: str | None = None,
    version: int | None = None,
    origin: str | None = None,
) -> uuid.UUID:
    """Insert one outbox row for the aggregate with the next version (or ``version``, already taken with
    ``next_version`` by a caller that had to lock it before reading the state); returns the event id."""
    if version is None:
        version = next_version(conn, aggregate_type, aggregate_id)
    event_id = uuid.uuid4()
    now = dt.datetime.now(dt.UTC)
    envelope = build_envelope(
        event_id=event_id,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        action=action,
        version=version,
        occurred_at=now,
        source=source,
        payload=payload,
    )
    values: dict[str, Any] = {
        "id": event_id,
        "aggregatetype": aggregate_type,
        "aggregateid": aggregate_id,
        "type": event_type or envelope["event_type"],
        "payload": envelope,
        "aggregate_version": version,
        "occurred_at": now,
        "headers": headers,
        "origin": origin,
    }
    if conn.dialect.name == "sqlite":
        # SQLite has no identity columns beside the rowid; writers are serialised, so max+1 is safe.
        values["seq"] = select(func.coalesce(func.max(outbox.c.seq), 0) + 1).scalar_subquery()
    conn.execute(insert(outbox).values(**values))
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:ch, :agg)"), {"ch": NOTIFY_CHANNEL, "agg": aggregate_type})
    return event_id
