"""ttsync's tables and functions move to a PostgreSQL schema of their own (TTSYNC_DB_SCHEMA, default ttsync)

TimeTracker's migrations/env.py has no include_object filter: its autogenerate saw every ttsync_* table in
its schema as "removed" and would have dropped the outbox and the consumer state. A fresh install creates
everything in ttsync's schema already (producer.migrate.enter_schema); this moves an older install's objects,
and gives each moved function the search path it needs to find both TimeTracker's tables and ttsync's.

Revision ID: 0005_own_schema
Revises: 0004_snapshot_progress
"""

from alembic import context, op
from sqlalchemy import text

revision = "0005_own_schema"
down_revision = "0004_snapshot_progress"
branch_labels = None
depends_on = None

VERSION_TABLE = "ttsync_alembic_version"


def _schemas() -> tuple[str, str] | None:
    """(TimeTracker's schema, ttsync's), or None where there is nothing to move (SQLite)."""
    bind = op.get_bind()
    schema = context.config.attributes.get("ttsync_schema")
    if bind.dialect.name != "postgresql" or not schema:
        return None
    home = bind.execute(text("SELECT s FROM unnest(current_schemas(false)) s WHERE s <> :t LIMIT 1"),
                        {"t": schema}).scalar() or "public"
    return home, schema


def _move(source: str, target: str, path: str) -> None:
    bind = op.get_bind()
    tables = bind.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = :s "
                               "AND tablename LIKE 'ttsync\\_%' AND tablename <> :v"),
                          {"s": source, "v": VERSION_TABLE}).scalars().all()
    for table in tables:
        op.execute(f'ALTER TABLE "{source}"."{table}" SET SCHEMA "{target}"')
    functions = bind.execute(text("SELECT quote_ident(n.nspname) || '.' || quote_ident(p.proname) || '(' || "
                                  "pg_get_function_identity_arguments(p.oid) || ')' FROM pg_proc p JOIN pg_namespace "
                                  "n ON n.oid = p.pronamespace WHERE n.nspname = :s AND p.proname LIKE 'ttsync\\_%'"),
                             {"s": source}).scalars().all()
    for signature in functions:
        op.execute(f"ALTER FUNCTION {signature} SET search_path = {path}")
        op.execute(f'ALTER FUNCTION {signature} SET SCHEMA "{target}"')


def upgrade() -> None:
    found = _schemas()
    if found is not None:
        home, schema = found
        _move(home, schema, f'"{schema}", "{home}"')


def downgrade() -> None:
    found = _schemas()
    if found is not None:
        home, schema = found
        _move(schema, home, f'"{home}", "{schema}"')
