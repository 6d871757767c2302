"""``ttsync outbox status``: backlog, oldest unpublished age, publish rate, rows that keep failing."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Engine, func, select

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
