"""The ground everything stands on: a real broker, a real PostgreSQL, SQLite, and our start scripts."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from sqlalchemy import Column, Integer, MetaData, Numeric, String, Table, select

from producer.database import make_engine
from tests.services import private_broker
from ttsync.local_services import DEPLOY_LOCAL, run_script

pytestmark = pytest.mark.integration


def test_record_with_key_and_headers_round_trips_through_the_broker(kafka_bootstrap: str) -> None:
    topic = f"roundtrip-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    headers = [("id", uuid.uuid4().bytes), ("eventType", b"invoice.created")]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    meta = producer.send(topic, key=b"invoice-42", value=b'{"amount": "10.50"}', headers=headers).get(timeout=30)
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, consumer_timeout_ms=10_000)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, meta.offset)
    record = next(iter(consumer))
    consumer.close()
    assert record.key == b"invoice-42"
    assert record.value == b'{"amount": "10.50"}'
    assert list(record.headers) == headers


def _roundtrip(url: str) -> None:
    from decimal import Decimal

    engine = make_engine(url)
    md = MetaData()
    table = Table(f"probe_{uuid.uuid4().hex[:8]}", md, Column("id", Integer, primary_key=True),
                  Column("name", String(50)), Column("amount", Numeric(10, 2)))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=1, name="O'Brien ünïcode", amount=Decimal("12.34")))
    with engine.connect() as conn:
        row = conn.execute(select(table)).one()
    md.drop_all(engine)
    engine.dispose()
    assert row.name == "O'Brien ünïcode"
    assert row.amount == Decimal("12.34")


def test_postgres_round_trip_through_sqlalchemy(pg_database: str) -> None:
    assert pg_database.startswith("postgresql")
    _roundtrip(pg_database)


def test_sqlite_round_trip_through_sqlalchemy(tmp_path: Path) -> None:
    _roundtrip(f"sqlite:///{tmp_path / 'x.sqlite3'}")


def alive(pid: int) -> bool:
    """A zombie (exited, not yet reaped by a sandbox's init) counts as stopped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _pid(state_dir: Path) -> int:
    return int((state_dir / "broker.pid").read_text().strip())


@pytest.mark.slow
def test_kafka_script_is_idempotent_and_stops_cleanly() -> None:
    with private_broker() as broker:
        first_pid = _pid(broker.state_dir)
        again = broker.start()  # must reuse, never start a second broker
        assert again == broker.bootstrap
        assert _pid(broker.state_dir) == first_pid
        assert broker.status_code() == 0
        broker.stop()
        assert broker.status_code() == 3
        assert not alive(first_pid)
        broker.stop()  # stopping twice is harmless


@pytest.mark.slow
def test_postgres_script_is_idempotent_and_stops_cleanly(tmp_path: Path) -> None:
    env = {"PG_STATE_DIR": str(tmp_path / "pg")}
    url1 = run_script("postgres.sh", "start", env)
    try:
        url2 = run_script("postgres.sh", "start", env)
        assert url1 == url2 and url1.startswith("postgresql+psycopg://postgres@127.0.0.1:")
        pid_file = tmp_path / "pg" / "data" / "postmaster.pid"
        pid = int(pid_file.read_text().splitlines()[0])
        _roundtrip(url1)
        status = subprocess.run(["bash", str(DEPLOY_LOCAL / "postgres.sh"), "status"],
                                env={**os.environ, **env}, capture_output=True, text=True, check=False)
        assert status.returncode == 0 and "running" in status.stdout
    finally:
        run_script("postgres.sh", "stop", env)
    assert not alive(pid)
    status = subprocess.run(["bash", str(DEPLOY_LOCAL / "postgres.sh"), "status"], env={**os.environ, **env},
                            capture_output=True, text=True, check=False)
    assert status.returncode == 3
