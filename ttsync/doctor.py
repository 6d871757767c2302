"""``ttsync doctor``: check the database, the broker, the topics and the QBO connection, and say what it found.

A health check must not write to what it checks: doctor reads only (no migration, no probe table, no probe
topic). Two exceptions, each asked for: ``--roundtrip`` sends one record through a probe topic of its own, and
a QBO check may refresh the access token (QBO rotates refresh tokens: the new one must be kept, or the
connection would be lost)."""

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


def check_database(url: str, name: str = "database") -> Check:
    """Reachable, and ttsync's tables at this release's migration (read-only)."""
    started = time.monotonic()
    engine = make_engine(url)
    try:
        version = _server_version(engine)
        revision = migrate.require_current(engine, name.replace("_", " "))
        return Check(name, True, f"{engine.dialect.name} {version}, migrations at {revision}",
                     time.monotonic() - started, {"dialect": engine.dialect.name, "revision": revision})
    except migrate.SchemaNotMigrated as exc:
        return Check(name, False, str(exc), time.monotonic() - started, {"dialect": engine.dialect.name})
    except Exception as exc:  # noqa: BLE001 - doctor reports every failure instead of dying on the first
        return Check(name, False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                     time.monotonic() - started)
    finally:
        engine.dispose()


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
    from ops.reconcile import expense_values_in_use
    from ttsync.wiring import build_parts

    try:
        categories, methods = expense_values_in_use(make_engine(settings.database_url))
        rows = build_parts(settings).applier.resolver.preflight(categories, methods)
    except Exception as exc:  # noqa: BLE001 - a check reports what went wrong, whatever it is
        return Check("mappings", False, f"could not check the QBO mappings: {exc}", time.monotonic() - started)
    bad = [f"{r.kind} -> {r.wanted}: {r.problem}" for r in rows if r.problem]
    detail = f"{len(rows)} mappings resolve in QBO" if not bad else "; ".join(bad) + " (see `ttsync map check`)"
    return Check("mappings", not bad, detail, time.monotonic() - started,
                 {"problems": bad, "checked": len(rows)})


def check_topics(kafka: KafkaConnection, settings: Settings) -> Check:
    """ttsync's topics exist: the aggregate topics, the retry tiers and the dead-letter topic (read-only)."""
    from kafka import KafkaAdminClient

    from consumer.group_consumer import consumer_topics
    from schemas.contract import dlq_topic

    started = time.monotonic()
    wanted = [*consumer_topics(settings.topic_prefix, settings.retry_topic_delays_s), dlq_topic(settings.topic_prefix)]
    try:
        admin = KafkaAdminClient(**kafka.client_config(), client_id="ttsync-doctor")
        try:
            existing = set(admin.list_topics())
        finally:
            admin.close()
    except Exception as exc:  # noqa: BLE001 - a check reports what went wrong, whatever it is
        return Check("topics", False, f"{type(exc).__name__}: {exc}", time.monotonic() - started)
    missing = [t for t in wanted if t not in existing]
    detail = f"all {len(wanted)} topics of prefix {settings.topic_prefix} exist" if not missing else \
        f"missing {', '.join(missing)} (`ttsync relay` and `ttsync consume` create them at start)"
    return Check("topics", not missing, detail, time.monotonic() - started, {"missing": missing})


def check_qbo(settings: Settings) -> Check:
    """The QBO connection answers: a token (refreshed if it must be) and the company's info."""
    from ttsync.qbo_connect import status

    started = time.monotonic()
    try:
        result = status(settings, check=True)
    except Exception as exc:  # noqa: BLE001 - a check reports what went wrong, whatever it is
        return Check("qbo", False, f"{type(exc).__name__}: {str(exc)[:300]}", time.monotonic() - started)
    if not result["connected"]:
        return Check("qbo", False, "not connected: run `ttsync qbo connect`", time.monotonic() - started)
    ok = result.get("check") == "ok"
    detail = f"realm {result['realm_id']} answers" if ok else f"realm {result['realm_id']}: {result.get('check')}"
    return Check("qbo", ok, detail, time.monotonic() - started, {"realm_id": result["realm_id"]})


def run_doctor(settings: Settings, *, start_services: bool = True, roundtrip: bool = False) -> list[Check]:
    checks = [check_database(settings.database_url)]
    if checks[0].ok:
        checks.append(check_capture_schema(settings.database_url))
    if settings.state_database_url:
        checks.append(check_database(settings.state_database_url, "state_database"))
    kafka_check, connection = check_kafka(settings.kafka, start=start_services)
    checks.append(kafka_check)
    if connection:
        checks.append(check_topics(connection, settings))
        if roundtrip:
            checks.append(check_roundtrip(connection))
    if settings.secret_key is not None:  # QBO credentials are set up
        checks.append(check_qbo(settings))
        checks.append(check_mappings(settings))
    return checks
