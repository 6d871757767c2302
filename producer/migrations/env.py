"""Alembic environment for ttsync's own tables. TimeTracker has its own Alembic history (alembic_version):
ours is kept apart in ``ttsync_alembic_version`` so the two never step on each other."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from producer.outbox_tables import TTSYNC_METADATA

VERSION_TABLE = "ttsync_alembic_version"
config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("alembic: no connection given and no sqlalchemy.url set")
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.begin() as conn:
        _run(conn)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    # On PostgreSQL ttsync's objects live in a schema of their own (producer.migrate.enter_schema put it first
    # on the search path, so the migrations name no schema).
    context.configure(
        connection=connection,
        target_metadata=TTSYNC_METADATA,
        version_table=VERSION_TABLE,
        version_table_schema=config.attributes.get("ttsync_schema"),
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=TTSYNC_METADATA,
        version_table=VERSION_TABLE,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
