"""The outbox seen from outside: ``ttsync outbox status`` (backlog, oldest unpublished age, publish rate, rows
that keep failing, a Debezium slot's position) and its housekeeping (``purge``, dropping a Debezium slot)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from sqlalchemy import Engine, func, select, text

from producer.outbox_tables import outbox


def outbox_status(engine: Engine, *, rate_window_s: int = 300, failing_limit: int = 10) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    unpublished = outbox.c.published_at.is_(None)
    with engine.connect() as conn:
        backlog = conn.execute(select(func.count()).where(unpublished)).scalar_one()
        oldest = conn.execute(select(func.min(outbox.c.occurred_at)).where(unpublished)).scalar()
        by_type = {
            t: n
            for t, n in conn.execute(
                select(outbox.c.aggregatetype, func.count()).where(unpublished).group_by(outbox.c.aggregatetype)
            )
        }
        window_start = now - dt.timedelta(seconds=rate_window_s)
        recent = conn.execute(select(func.count()).where(outbox.c.published_at >= window_start)).scalar_one()
        published_total = conn.execute(select(func.count()).where(outbox.c.published_at.is_not(None))).scalar_one()
        failing_rows = conn.execute(
            select(
                outbox.c.id, outbox.c.type, outbox.c.aggregateid, outbox.c.attempts, outbox.c.last_error,
                outbox.c.occurred_at, outbox.c.available_at,
            )
            .where(unpublished, outbox.c.attempts > 0)
            .order_by(outbox.c.attempts.desc(), outbox.c.seq)
            .limit(failing_limit)
        ).all()
        failing_count = conn.execute(select(func.count()).where(unpublished, outbox.c.attempts > 0)).scalar_one()
    oldest_age = (now - _aware(oldest)).total_seconds() if oldest is not None else 0.0
    return {
        "backlog": int(backlog),
        "backlog_by_type": by_type,
        "oldest_unpublished_age_seconds": round(max(oldest_age, 0.0), 3),
        "published_retained": int(published_total),
        "publish_rate_per_second": round(recent / rate_window_s, 3),
        "rate_window_seconds": rate_window_s,
        "failing": int(failing_count),
        "failing_rows": [
            {
                "id": str(r.id),
                "type": r.type,
                "aggregate_id": r.aggregateid,
                "attempts": r.attempts,
                "last_error": r.last_error,
                "occurred_at": _aware(r.occurred_at).isoformat(),
                "next_attempt_at": _aware(r.available_at).isoformat() if r.available_at else None,
            }
            for r in failing_rows
        ],
    }


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def replication_slot(engine: Engine, slot: str) -> dict[str, Any] | None:
    """The Debezium relay's position: its slot on this database, and how many WAL bytes it has not confirmed
    (what is still in flight once Debezium relays the outbox; rows are not marked published then)."""
    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT active, confirmed_flush_lsn::text, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS lag_bytes "
            "FROM pg_replication_slots WHERE slot_name = :s"), {"s": slot}).first()
    if row is None:
        return None
    return {"slot": slot, "active": bool(row[0]), "confirmed_flush_lsn": row[1], "lag_bytes": int(row[2] or 0)}


def purge(engine: Engine, older_than: dt.timedelta, *, include_unpublished: bool = False, chunk: int = 5000) -> int:
    """Delete outbox rows older than ``older_than``: published ones, and with ``include_unpublished`` every row
    (once Debezium relays the outbox it reads inserts from the WAL, which its slot keeps until it has confirmed
    them, so deleting a row it has not streamed yet loses nothing)."""
    cutoff = dt.datetime.now(dt.UTC) - older_than
    which = "occurred_at < :cutoff" if include_unpublished else \
        "published_at IS NOT NULL AND published_at < :cutoff"
    total = 0
    while True:
        with engine.begin() as conn:
            deleted = conn.execute(text(f"DELETE FROM ttsync_outbox WHERE id IN (SELECT id FROM ttsync_outbox "
                                        f"WHERE {which} LIMIT :n)"), {"cutoff": cutoff, "n": chunk}).rowcount
        total += deleted
        if deleted < chunk:
            return total


def drop_replication_slot(engine: Engine, slot: str, timeout_s: float = 60.0) -> bool:
    """Drop a Debezium slot once its connector has let go of it (an abandoned slot keeps WAL without limit, and
    its database cannot be dropped). True when the slot is gone, False when it stayed active for ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = replication_slot(engine, slot)
        if info is None:
            return True
        if not info["active"]:
            with engine.begin() as conn:
                conn.execute(text("SELECT pg_drop_replication_slot(:s)"), {"s": slot})
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
