"""ttsync's objects live in a PostgreSQL schema of their own, where TimeTracker's Alembic autogenerate does not
look (its migrations/env.py has no include_object filter), and an install from before moves there intact."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, MetaData, create_engine, text

from producer import migrate
from producer.database import make_engine, scratch_database
from producer.trigger_capture import install_sql, install_triggers
from tests.timetracker_fixture import RealApp, load_schema

pytestmark = pytest.mark.integration


@pytest.fixture
def tt_engine(pg_server_url: str) -> Iterator[Engine]:
    with scratch_database(pg_server_url, "tt_own_") as url:
        engine = make_engine(url)
        load_schema(engine)
        yield engine
        engine.dispose()


def ttsync_objects_in(engine: Engine, schema: str) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(text(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s "
            "AND c.relkind = 'r' AND c.relname LIKE 'ttsync%' UNION ALL SELECT p.proname FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = :s AND p.proname LIKE 'ttsync%'"),
            {"s": schema}).scalars())


def test_timetrackers_autogenerate_proposes_nothing_on_ttsyncs_objects(tt_engine: Engine) -> None:
    timetracker = MetaData()
    with tt_engine.connect() as conn:
        timetracker.reflect(conn)  # TimeTracker's 138 tables, as its migrations built them
    assert len(timetracker.tables) == 138
    migrate.upgrade(tt_engine)
    with tt_engine.begin() as conn:
        install_triggers(conn)
    # What `flask db check` / `flask db migrate` compute: TimeTracker's metadata against the database, over a
    # connection of TimeTracker's own (its search path knows nothing of ttsync's schema).
    flask_engine = create_engine(tt_engine.url)
    with flask_engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), timetracker)
    flask_engine.dispose()
    assert [d for d in diffs if "ttsync" in repr(d)] == []
    assert ttsync_objects_in(tt_engine, "public") == []
    assert "ttsync_outbox" in ttsync_objects_in(tt_engine, "ttsync")


def before_the_origin_column(sql: str) -> str:
    """The capture as installed before migration 0007: no ``origin`` column to write."""
    old = sql.replace("headers, origin)", "headers)")
    old = re.sub(r"jsonb_build_object\('txid', NEW\.txid::text, 'capture', 'trigger'\),\s*--[^\n]*\n\s*"
                 r"NULLIF\(current_setting\('ttsync\.origin', true\), ''\)\)",
                 "jsonb_build_object('txid', NEW.txid::text, 'capture', 'trigger'))", old)
    assert "origin" not in old.split("CREATE OR REPLACE FUNCTION ttsync_capture_flush")[1].split("$fn$;")[0]
    return old


def test_an_install_from_before_moves_to_its_schema_and_keeps_capturing(tt_engine: Engine) -> None:
    # ttsync as it was installed before: migrations 0001-0004 and the triggers in TimeTracker's schema.
    cfg = migrate._config(tt_engine)
    with tt_engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004_snapshot_progress")
        with conn.connection.dbapi_connection.cursor() as cur:  # type: ignore[union-attr]
            cur.execute("SET LOCAL search_path = public")
            cur.execute(before_the_origin_column(install_sql("tt-old")))
    assert "ttsync_outbox" in ttsync_objects_in(tt_engine, "public")
    app = RealApp(tt_engine)
    app.client("Before the move")

    assert migrate.upgrade(tt_engine) == migrate.head_revision()
    assert ttsync_objects_in(tt_engine, "public") == []
    app.client("After the move")  # TimeTracker's session knows nothing of ttsync's schema
    with tt_engine.connect() as conn:
        names = conn.execute(text("SELECT payload->'payload'->>'name' FROM ttsync.ttsync_outbox ORDER BY seq"))
        assert list(names.scalars()) == ["Before the move", "After the move"]
    assert migrate.upgrade(tt_engine) == migrate.head_revision()  # idempotent
