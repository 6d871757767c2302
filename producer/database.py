"""Engines for the TimeTracker database: one place that knows the dialect quirks."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url


def make_engine(url: str, **kwargs: object) -> Engine:
    """An engine for ``url``. SQLite gets a busy timeout and foreign keys on; its parent dir is created."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)  # type: ignore[arg-type]

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        return engine
    # No pre-ping (a round trip per checkout): a connection lost to a restart fails once, is invalidated by the
    # pool, and the caller's retry (relay backoff, consumer retry policy) gets a fresh one.
    return create_engine(url, **kwargs)  # type: ignore[arg-type]
