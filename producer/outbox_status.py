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
            "pg_wal_lsn_diff(pg_current_wal_insert_lsn(), confirmed_flush_lsn)::bigint AS lag_bytes "
            "FROM pg_replication_slots WHERE slot_name = :s"), {"s": slot}).first()
    if row is None:
        return None
    return {"slot": slot, "active": bool(row[0]), "confirmed_flush_lsn": row[1], "lag_bytes": int(row[2] or 0)}


class PurgeRefused(ValueError):
    """A purge that could lose an event: refused, with the reason."""


def purge(engine: Engine, older_than: dt.timedelta, *, slot: str | None = None, chunk: int = 5000,
          confirm_timeout_s: float = 60.0) -> int:
    """Delete outbox rows older than ``older_than``: published ones; with ``slot`` (the Debezium relay, which
    reads inserts from the WAL and never marks rows published) also unpublished ones, but only those its
    replication slot has confirmed: the candidates are read in one snapshot, the WAL position is taken after it,
    and they are deleted once the slot's ``confirmed_flush_lsn`` has passed that position (every row of the
    snapshot was committed before it). Refuses an age of zero or less."""
    if older_than <= dt.timedelta(0):
        raise PurgeRefused(f"an age of {older_than.total_seconds() / 3600:g} h would delete rows still in flight: "
                           "give a positive age")
    cutoff = dt.datetime.now(dt.UTC) - older_than
    total = _delete_where(engine, "published_at IS NOT NULL AND published_at < :cutoff", {"cutoff": cutoff}, chunk)
    if slot is None:
        return total
    if engine.dialect.name != "postgresql":
        raise PurgeRefused("unpublished rows can only be purged behind a PostgreSQL replication slot")
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        ids = [str(i) for i in conn.execute(text(
            "SELECT id FROM ttsync_outbox WHERE published_at IS NULL AND occurred_at < :cutoff"),
            {"cutoff": cutoff}).scalars()]
        # The insert position, not pg_current_wal_lsn(): that is the write position, which can lag behind
        # records already committed (it moves in whole pages), so a slot created moments ago could seem to
        # have confirmed rows it never streamed.
        position = conn.execute(text("SELECT pg_current_wal_insert_lsn()::text")).scalar_one()
        conn.rollback()
    if not ids:
        return total
    deadline = time.monotonic() + confirm_timeout_s
    while True:
        with engine.connect() as conn:
            confirmed = conn.execute(text(
                "SELECT confirmed_flush_lsn >= CAST(:p AS pg_lsn) FROM pg_replication_slots WHERE slot_name = :s"),
                {"p": position, "s": slot}).scalar()
        if confirmed is None:
            raise PurgeRefused(f"no replication slot {slot!r} on this database: {len(ids)} unpublished row(s) kept")
        if confirmed:
            break
        if time.monotonic() > deadline:
            raise PurgeRefused(f"slot {slot!r} has not confirmed WAL position {position} within "
                               f"{confirm_timeout_s:g} s: {len(ids)} unpublished row(s) kept")
        time.sleep(0.5)
    for start in range(0, len(ids), chunk):
        with engine.begin() as conn:
            total += conn.execute(text("DELETE FROM ttsync_outbox WHERE id = ANY(CAST(:ids AS uuid[]))"),
                                  {"ids": ids[start:start + chunk]}).rowcount
    return total


def _delete_where(engine: Engine, which: str, params: dict[str, Any], chunk: int) -> int:
    total = 0
    while True:
        with engine.begin() as conn:
            deleted = conn.execute(text(f"DELETE FROM ttsync_outbox WHERE id IN (SELECT id FROM ttsync_outbox "
                                        f"WHERE {which} LIMIT :n)"), {**params, "n": chunk}).rowcount
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
