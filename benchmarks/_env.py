"""Shared set-up for benchmarks: the real services (from the environment or started locally), a scratch
database, and a table printer."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.engine import make_url

from producer import migrate
from producer.database import make_engine
from producer.timetracker_schema import TIMETRACKER_METADATA
from ttsync.local_services import ensure_kafka, ensure_postgres


def kafka_bootstrap() -> str:
    bootstrap, _ = ensure_kafka(os.environ.get("TTSYNC_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    return bootstrap


def postgres_url() -> str:
    url = os.environ.get("TTSYNC_DATABASE_URL", "")
    return url if url.startswith("postgresql") else ensure_postgres()


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = make_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    TIMETRACKER_METADATA.create_all(engine)
    migrate.upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"\n{title}")
    print("-" * (width + 24))
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]
