"""Engines for the TimeTracker database: one place that knows the dialect quirks."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool


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


def create_database(server_url: str, prefix: str) -> tuple[str, Callable[[], None]]:
    """A new, empty PostgreSQL database on the server of ``server_url``: its URL and a function dropping it."""
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    admin = make_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    admin.dispose()

    def drop() -> None:
        # A connection of its own: one kept since the creation may have died with a server restart meanwhile.
        dropper = make_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with dropper.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            dropper.dispose()

    return make_url(server_url).set(database=name).render_as_string(hide_password=False), drop


@contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[str]:
    url, drop = create_database(server_url, prefix)
    try:
        yield url
    finally:
        drop()
