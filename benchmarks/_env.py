"""Shared set-up for benchmarks: the real services (from the environment or started locally), a scratch
database, and a table printer."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from producer import migrate
from producer.database import make_engine
from producer.database import scratch_database as empty_database
from producer.timetracker_schema import TIMETRACKER_METADATA
from ttsync.local_services import ensure_kafka, ensure_postgres


def kafka_bootstrap() -> str:
    connection, _ = ensure_kafka(os.environ.get("TTSYNC_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    return connection.bootstrap_servers


DURABILITY = ("fsync", "synchronous_commit", "full_page_writes")


def postgres_url() -> str:
    """The PostgreSQL server to measure on; refused unless it runs durable: figures taken with fsync,
    synchronous_commit or full_page_writes off do not count (``PG_DURABLE=1 deploy/local/postgres.sh start``)."""
    url = os.environ.get("TTSYNC_DATABASE_URL", "")
    url = url if url.startswith("postgresql") else ensure_postgres(durable=True)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            off = [name for name in DURABILITY if conn.exec_driver_sql(f"SHOW {name}").scalar() != "on"]
    finally:
        engine.dispose()
    if off:
        raise SystemExit(f"PostgreSQL at {url} runs with {', '.join(off)} off: benchmarks need it durable. Run "
                         "`PG_DURABLE=1 bash deploy/local/postgres.sh start` (it restarts the local cluster).")
    return url


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A fresh database with TimeTracker's tables and ttsync's, dropped afterwards."""
    with empty_database(server_url, "bench_") as url:
        engine = make_engine(url)
        TIMETRACKER_METADATA.create_all(engine)
        migrate.upgrade(engine)
        engine.dispose()
        yield url


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
