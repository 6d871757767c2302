"""Engines for the TimeTracker database: one place that knows the dialect quirks."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

DEFAULT_SCHEMA = "ttsync"
SCHEMA_ENV = "TTSYNC_DB_SCHEMA"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def ttsync_schema(name: str | None = None) -> str:
    """The PostgreSQL schema that holds ttsync's tables and functions (``TTSYNC_DB_SCHEMA``, default ttsync):
    out of TimeTracker's own schema, where its Alembic autogenerate would propose to drop them."""
    schema = name or os.environ.get(SCHEMA_ENV) or DEFAULT_SCHEMA
    if not _IDENTIFIER.match(schema):
        raise ValueError(f"{SCHEMA_ENV}={schema!r}: a lowercase PostgreSQL identifier is needed")
    return schema


def schema_of(conn: Connection) -> str | None:
    """Where ttsync's objects live: its own schema on PostgreSQL, none on SQLite."""
    return ttsync_schema() if conn.dialect.name == "postgresql" else None


def enter_schema(conn: Connection) -> str | None:
    """On PostgreSQL: make sure ttsync's schema exists and put it first on this transaction's search path, so
    that what ttsync creates lands there (TimeTracker's tables stay visible after it)."""
    schema = schema_of(conn)
    if schema is not None:
        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        conn.execute(text("SELECT set_config('search_path', :s || ', ' || current_setting('search_path'), true)"),
                     {"s": f'"{schema}"'})
    return schema


def make_engine(url: str, **kwargs: object) -> Engine:
    """An engine for ``url``. SQLite gets a busy timeout and foreign keys on; its parent dir is created.
    PostgreSQL sessions see ttsync's schema after the database's own search path: TimeTracker's tables first,
    then ttsync's, with no name qualified anywhere."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        return engine
    # No pre-ping (a round trip per checkout): a connection lost to a restart fails once, is invalidated by the
    # pool, and the caller's retry (relay backoff, consumer retry policy) gets a fresh one.
    schema = ttsync_schema()
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _search_path(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        autocommit = dbapi_conn.autocommit
        dbapi_conn.autocommit = True  # a SET inside a transaction that is rolled back would be undone
        try:
            with dbapi_conn.cursor() as cur:
                cur.execute("SELECT set_config('search_path', current_setting('search_path') || ', ' || %s, false)",
                            (schema,))
        finally:
            dbapi_conn.autocommit = autocommit

    return engine


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
