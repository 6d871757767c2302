"""``ttsync doctor``: find or start Kafka and the database, send one event through the broker and back,
check the database, and say what it found."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from producer import migrate
from producer.database import make_engine
from schemas.kafka_client import KafkaConnection
from ttsync.local_services import ServiceUnavailable, ensure_kafka
from ttsync.settings import Settings


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


def check_database(url: str) -> Check:
    started = time.monotonic()
    try:
        engine = make_engine(url)
        revision = migrate.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS ttsync_doctor_probe (id VARCHAR(64) PRIMARY KEY)"))
            probe = uuid.uuid4().hex
            conn.execute(text("INSERT INTO ttsync_doctor_probe (id) VALUES (:id)"), {"id": probe})
            back = conn.execute(text("SELECT id FROM ttsync_doctor_probe WHERE id = :id"), {"id": probe}).scalar()
            conn.execute(text("DROP TABLE ttsync_doctor_probe"))
        version = _server_version(engine)
        engine.dispose()
        ok = back == probe
        return Check(
            "database", ok, f"{engine.dialect.name} {version}, migrations at {revision}",
            time.monotonic() - started, {"dialect": engine.dialect.name, "revision": revision},
        )
    except Exception as exc:  # noqa: BLE001 - doctor reports every failure instead of dying on the first
        return Check("database", False, f"{type(exc).__name__}: {exc}", time.monotonic() - started)


def _server_version(engine: Any) -> str:
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            return str(conn.execute(text("SHOW server_version")).scalar())
        if engine.dialect.name == "sqlite":
            return str(conn.execute(text("SELECT sqlite_version()")).scalar())
    return "?"


def check_kafka(kafka: KafkaConnection, *, start: bool) -> tuple[Check, KafkaConnection | None]:
    started = time.monotonic()
    try:
        connection, started_here = ensure_kafka(kafka, start=start)
    except ServiceUnavailable as exc:
        return Check("kafka", False, str(exc), time.monotonic() - started), None
    how = "started from deploy/local/kafka.sh" if started_here else "already running"
    address = connection.bootstrap_servers
    return Check("kafka", True, f"broker at {address}, {connection.security_protocol} ({how})",
                 time.monotonic() - started, {"bootstrap": address, "started": started_here,
                                              "security_protocol": connection.security_protocol}), connection


def check_roundtrip(kafka: KafkaConnection) -> Check:
    """Produce one record with a key and headers to a fresh topic, consume it back, compare, clean up."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic

    started = time.monotonic()
    topic = f"ttsync.doctor.{uuid.uuid4().hex[:12]}"
    key, value = b"doctor-key", b'{"hello": "ttsync"}'
    headers = [("id", uuid.uuid4().hex.encode()), ("eventType", b"doctor.ping")]
    admin = KafkaAdminClient(**kafka.client_config(), client_id="ttsync-doctor")
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        producer = KafkaProducer(**kafka.client_config(), acks="all", enable_idempotence=True)
        meta = producer.send(topic, key=key, value=value, headers=headers).get(timeout=30)
        producer.close()
        consumer = KafkaConsumer(**kafka.client_config(), enable_auto_commit=False,
                                 consumer_timeout_ms=10_000)
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        got = next(iter(consumer), None)
        consumer.close()
        ok = got is not None and got.key == key and got.value == value and list(got.headers) == headers
        detail = f"record with key and 2 headers round-tripped through {topic}" if ok else f"got {got!r}"
        return Check("roundtrip", ok, detail, time.monotonic() - started, {"topic": topic})
    except Exception as exc:  # noqa: BLE001
        return Check("roundtrip", False, f"{type(exc).__name__}: {exc}", time.monotonic() - started)
    finally:
        try:
            admin.delete_topics([topic])
        except Exception:  # noqa: BLE001 - the topic may not exist if creation failed; nothing to clean
            pass
        admin.close()


def check_capture_schema(url: str) -> Check:
    """``ttsync capture check``: every TimeTracker column ttsync reads is there (read-only)."""
    started = time.monotonic()
    from producer.aggregate_snapshots import columns_read, schema_differences

    try:
        with make_engine(url).connect() as conn:
            missing = schema_differences(conn)
    except Exception as exc:  # noqa: BLE001 - a check reports what went wrong, whatever it is
        return Check("capture_schema", False, f"could not read the schema: {exc}", time.monotonic() - started)
    if set(missing) >= set(columns_read()):
        return Check("capture_schema", True, "no TimeTracker tables in this database (yet)",
                     time.monotonic() - started, {"missing": []})
    detail = "every column ttsync reads is there" if not missing else \
        "missing: " + ", ".join(missing) + " (TimeTracker upgraded? see `ttsync capture check`)"
    return Check("capture_schema", not missing, detail, time.monotonic() - started, {"missing": missing})


def check_mappings(settings: Settings) -> Check:
    """``ttsync map check``'s preflight: every category and payment method resolves to a QBO account of the
    right type (only with QBO credentials: it calls QBO)."""
    started = time.monotonic()
    from consumer.reconcile import expense_values_in_use
    from consumer.wiring import build_parts

    try:
        categories, methods = expense_values_in_use(make_engine(settings.database_url))
        rows = build_parts(settings).applier.resolver.preflight(categories, methods)
    except Exception as exc:  # noqa: BLE001 - a check reports what went wrong, whatever it is
        return Check("mappings", False, f"could not check the QBO mappings: {exc}", time.monotonic() - started)
    bad = [f"{r.kind} -> {r.wanted}: {r.problem}" for r in rows if r.problem]
    detail = f"{len(rows)} mappings resolve in QBO" if not bad else "; ".join(bad) + " (see `ttsync map check`)"
    return Check("mappings", not bad, detail, time.monotonic() - started,
                 {"problems": bad, "checked": len(rows)})


def run_doctor(settings: Settings, *, start_services: bool = True) -> list[Check]:
    checks = [check_database(settings.database_url)]
    if checks[0].ok:
        checks.append(check_capture_schema(settings.database_url))
    kafka_check, address = check_kafka(settings.kafka, start=start_services)
    checks.append(kafka_check)
    if address:
        checks.append(check_roundtrip(address))
    else:
        checks.append(Check("roundtrip", False, "skipped: no broker"))
    if settings.secret_key is not None:  # QBO credentials are set up
        checks.append(check_mappings(settings))
    return checks
