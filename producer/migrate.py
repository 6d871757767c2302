"""``ttsync db upgrade``: create or upgrade ttsync's tables with Alembic (PostgreSQL and SQLite)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from producer.database import enter_schema, schema_of

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "ttsync_alembic_version"


def _config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def _move_version_table(conn: Connection, schema: str) -> None:
    """An install from before the schema kept its Alembic table beside TimeTracker's: Alembic must find it in
    the new place to know where it stands (migration 0005 then moves the rest)."""
    old = conn.execute(text("SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE c.relname = :t AND c.relkind = 'r' AND n.nspname <> :s"),
                       {"t": VERSION_TABLE, "s": schema}).scalar()
    new = conn.execute(text("SELECT to_regclass(:q)"), {"q": f'"{schema}".{VERSION_TABLE}'}).scalar()
    if old is not None and new is None:
        conn.execute(text(f'ALTER TABLE "{old}".{VERSION_TABLE} SET SCHEMA "{schema}"'))


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Upgrade to ``revision``; returns the revision the database is at afterwards."""
    cfg = _config(engine)
    with engine.begin() as conn:
        schema = enter_schema(conn)
        if schema is not None:
            _move_version_table(conn, schema)
        cfg.attributes["connection"] = conn
        cfg.attributes["ttsync_schema"] = schema
        command.upgrade(cfg, revision)
    return current_revision(engine) or ""


def downgrade(engine: Engine, revision: str) -> str:
    cfg = _config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        cfg.attributes["ttsync_schema"] = enter_schema(conn)
        command.downgrade(cfg, revision)
    return current_revision(engine) or "base"


class SchemaNotMigrated(RuntimeError):
    """ttsync's tables are missing or older than this release: `ttsync db upgrade` must run first."""


def require_current(engine: Engine, what: str = "database") -> str:
    """Read-only: the revision, or SchemaNotMigrated saying to run `ttsync db upgrade` (a command that cannot
    work on an old schema stops at once instead of retrying for ever)."""
    at, head = current_revision(engine), head_revision()
    if at != head:
        where = engine.url.render_as_string(hide_password=True)
        raise SchemaNotMigrated(f"the {what} ({where}) is at migration {at or 'none'}, not {head}: run "
                                "`ttsync db upgrade` first")
    return at


def current_revision(engine: Engine) -> str | None:
    """Read-only: a health check may call it."""
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE,
                                                     "version_table_schema": schema_of(conn)})
        try:
            return ctx.get_current_revision()
        finally:
            conn.rollback()


def head_revision() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(cfg).get_current_head() or ""
