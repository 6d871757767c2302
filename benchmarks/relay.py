"""Relay benchmark, for each Kafka client the relay can run on (kafka-python, librdkafka): events/s through the
relay next to a bare producer of the same client sending the same records in the same run, and commit-to-Kafka
latency at a steady rate.

    python3 -m benchmarks.relay [--events 50000] [--rate 500] [--seconds 20] [--clients kafka-python,confluent]
                                [--json out.json]

Prints a table; it is not a timed test. Figures on shared machines are noisy: read the ratio.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from sqlalchemy import text

from benchmarks._env import kafka_bootstrap, percentile, postgres_url, print_table, scratch_database
from producer.database import make_engine
from producer.outbox_writer import build_envelope
from schemas import topic_for
from schemas.kafka_client import OutRecord, as_connection
from ttsync.logging_setup import configure_logging
from ttsync.settings import Settings
from ttsync.wiring import build_relay, freeze_startup_heap

SEED_SQL = text(
    """
INSERT INTO ttsync_outbox (id, aggregatetype, aggregateid, type, payload, aggregate_version, occurred_at)
SELECT s.u, 'client', (s.g % 1000)::text, 'client.updated',
       jsonb_build_object('event_id', s.u, 'event_type', 'client.updated', 'aggregate_type', 'client',
                          'aggregate_id', (s.g % 1000)::text, 'aggregate_version', s.g / 1000 + 1,
                          'occurred_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                          'schema_version', '1.0', 'source', 'bench',
                          'payload', jsonb_build_object('id', s.g % 1000, 'name', 'Client ' || s.g,
                                                        'address', repeat('x', :pad))),
       s.g / 1000 + 1, now()
  FROM (SELECT gen_random_uuid() AS u, g FROM generate_series(0, :n - 1) g) s
"""
)


def producer_config(bootstrap: str) -> dict:
    # The same settings KafkaRecordPublisher uses, so the comparison is about the relay's own overhead.
    return {**as_connection(bootstrap).producer_config("ttsync-bench"), "max_in_flight_requests_per_connection": 5,
            "linger_ms": 0, "batch_size": 256 * 1024}


CLIENT_NAMES = {"kafka-python": "kafka-python", "confluent": "librdkafka"}


def bare_send(client: str, bootstrap: str, topic: str, rows: list) -> float:  # type: ignore[type-arg]
    """Seconds a bare producer of ``client`` (the relay's settings) takes to get ``rows`` acknowledged."""
    def headers(r) -> list[tuple[str, bytes]]:  # type: ignore[no-untyped-def]
        return [("id", str(r[0]).encode()), ("eventType", r[2].encode()), ("aggregateVersion", str(r[4]).encode()),
                ("schemaVersion", b"1.0")]

    if client == "confluent":
        from confluent_kafka import Producer

        from producer.librdkafka_publisher import relay_producer_config

        fast = Producer(relay_producer_config(as_connection(bootstrap), "ttsync-bench", 15.0))
        fast.produce(topic, b"warm")
        fast.flush(30)
        failed: list[object] = []
        started = time.perf_counter()
        for r in rows:
            while True:
                try:
                    fast.produce(topic, key=r[1].encode(), value=r[3].encode(), headers=headers(r),
                                 on_delivery=lambda err, _m: failed.append(err) if err else None)
                    break
                except BufferError:
                    fast.poll(0.05)
        fast.flush(120)
        seconds = time.perf_counter() - started
        assert not failed, failed[:3]
        return seconds
    producer = KafkaProducer(**producer_config(bootstrap))
    producer.send(topic, b"warm").get(30)
    started = time.perf_counter()
    futures = [producer.send(topic, key=r[1].encode(), value=r[3].encode(), headers=headers(r)) for r in rows]
    producer.flush()
    seconds = time.perf_counter() - started
    assert all(f.succeeded() for f in futures)
    producer.close()
    return seconds


def throughput(db_url: str, bootstrap: str, events: int, pad: int, client: str = "kafka-python") -> dict:
    engine = make_engine(db_url)
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic_for("client", prefix), 3, 1), NewTopic(f"{prefix}.bare", 3, 1)])
    admin.close()
    with engine.begin() as conn:
        conn.execute(SEED_SQL, {"n": events, "pad": pad})
        rows = conn.execute(text("SELECT id, aggregateid, type, payload::text, aggregate_version "
                                 "FROM ttsync_outbox ORDER BY seq")).all()
    avg_bytes = sum(len(r[3]) for r in rows) / len(rows)

    # Bare producer first, so both see a warm broker and page cache.
    bare_s = bare_send(client, bootstrap, f"{prefix}.bare", rows)

    # The relay as `ttsync relay` runs it: its settings' defaults, its heap settled.
    relay = build_relay(Settings(kafka_client=client), engine, kafka=bootstrap,  # type: ignore[arg-type]
                        topic_prefix=prefix)
    publisher = relay.publisher
    freeze_startup_heap()
    started = time.perf_counter()
    stats = relay.run(idle_exit=True)
    relay_s = time.perf_counter() - started
    publisher.close()
    assert stats.published == events, stats
    engine.dispose()
    return {"client": client, "events": events, "avg_value_bytes": round(avg_bytes), "bare_eps": events / bare_s,
            "relay_eps": events / relay_s, "ratio": bare_s / relay_s}


class InstantBroker:
    """A publisher whose broker acknowledges everything at once: the relay's own ceiling (PostgreSQL's claiming
    and marking plus the relay's Python), which no Kafka client can lift."""

    def send(self, records: list[OutRecord]) -> list[None]:
        return [None] * len(records)

    def wait(self, handle: list[None]) -> list[None]:
        return handle

    def close(self) -> None:
        pass


def relay_ceiling(db_url: str, events: int, pad: int) -> dict:
    """events/s of the relay with an instant broker, on the same rows as ``throughput``."""
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(SEED_SQL, {"n": events, "pad": pad})
    relay = build_relay(Settings(), engine, InstantBroker(), topic_prefix="ceiling")  # type: ignore[arg-type]
    freeze_startup_heap()
    started = time.perf_counter()
    stats = relay.run(idle_exit=True)
    seconds = time.perf_counter() - started
    assert stats.published == events, stats
    engine.dispose()
    return {"events": events, "relay_eps": events / seconds}


def ttsync_relay_on(client: str) -> Callable[[str, str, str], Callable[[], None]]:
    def start(db_url: str, bootstrap: str, prefix: str) -> Callable[[], None]:
        return start_ttsync_relay(db_url, bootstrap, prefix, client)
    return start


def start_ttsync_relay(db_url: str, bootstrap: str, prefix: str, client: str = "kafka-python"
                       ) -> Callable[[], None]:
    """The relay as it runs in production: `ttsync relay`, a process of its own. Returns its stopper."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ttsync", "relay", "--no-create-topics"],
        env={**os.environ, "TTSYNC_DATABASE_URL": db_url, "TTSYNC_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
             "TTSYNC_TOPIC_PREFIX": prefix, "TTSYNC_LOG_LEVEL": "WARNING", "TTSYNC_LOG_FORMAT": "json",
             "TTSYNC_KAFKA_CLIENT": client},
        # its log, for when a run goes wrong
        stdout=subprocess.DEVNULL, stderr=open(Path(tempfile.gettempdir()) / f"ttsync-bench-relay-{prefix}.log", "wb"),  # noqa: SIM115
    )

    def stop() -> None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return stop


def latency(db_url: str, bootstrap: str, rate: int, seconds: float, writers: int = 2,
            start_relay: Callable[[str, str, str], Callable[[], None]] = start_ttsync_relay) -> dict:
    engine = make_engine(db_url, pool_size=4)
    prefix = f"lat{uuid.uuid4().hex[:6]}"
    topic = topic_for("client", prefix)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    # LogAppendTime: the record's timestamp is when the broker appended it, i.e. when it is "in Kafka".
    admin.create_topics([NewTopic(topic, 3, 1, topic_configs={"message.timestamp.type": "LogAppendTime"})])
    admin.close()
    stop_relay = start_relay(db_url, bootstrap, prefix)

    committed_at: dict[str, float] = {}
    received: dict[str, float] = {}
    n_total = int(rate * seconds)

    def consume() -> None:
        consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                 group_id=f"lat-{uuid.uuid4().hex[:6]}", enable_auto_commit=False)
        deadline = time.time() + seconds + 60
        while len(received) < n_total and time.time() < deadline:
            for recs in consumer.poll(timeout_ms=200).values():
                for r in recs:
                    received[dict(r.headers)["id"].decode()] = r.timestamp / 1000.0
        consumer.close()

    consumer_thread = threading.Thread(target=consume)
    consumer_thread.start()
    time.sleep(2)  # let the consumer join before the clock starts
    # The writers are processes of their own, as TimeTracker's web workers are: their commit timestamps are
    # not delayed by the relay sharing their interpreter.

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    started = time.time() + 0.5
    procs = [ctx.Process(target=_writer, args=(db_url, w, writers, n_total, rate, started, queue))
             for w in range(writers)]
    for p in procs:
        p.start()
    for _ in procs:
        committed_at.update(queue.get(timeout=seconds + 120))
    for p in procs:
        p.join(30)
    achieved = n_total / (max(committed_at.values()) - started)
    consumer_thread.join()
    stop_relay()
    engine.dispose()
    lat_ms = [(received[k] - committed_at[k]) * 1000 for k in committed_at if k in received]
    return {"rate_target": rate, "rate_achieved": achieved, "events": n_total, "received": len(lat_ms),
            "p50_ms": percentile(lat_ms, 50), "p99_ms": percentile(lat_ms, 99), "max_ms": max(lat_ms)}


def _writer(db_url: str, index: int, writers: int, n_total: int, rate: int, started: float, queue) -> None:  # type: ignore[no-untyped-def]
    """Load generator: the same three statements as producer.outbox_writer.write_event, sent with plain psycopg
    so that generating 500 commits/s leaves the two cores to the relay being measured."""
    import psycopg
    from psycopg.types.json import Jsonb
    from sqlalchemy.engine import make_url

    from producer.database import ttsync_schema

    conn = psycopg.connect(make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False))
    # ttsync's tables live in a schema of their own, beside TimeTracker's (producer.database.make_engine)
    conn.execute("SELECT set_config('search_path', current_setting('search_path') || ', ' || %s, false)",
                 (ttsync_schema(),))
    # Commits as production makes them, whatever the cluster's default (benchmarks refuse a non-durable one).
    conn.execute("SET synchronous_commit = on")
    conn.commit()
    out: dict[str, float] = {}
    for i in range(index, n_total, writers):
        delay = started + i / rate - time.time()
        if delay > 0:
            time.sleep(delay)
        event_id, agg = uuid.uuid4(), str(i % 200)
        now = dt.datetime.now(dt.UTC)
        with conn.transaction():
            version = conn.execute(
                "INSERT INTO ttsync_aggregate_versions AS v (aggregatetype, aggregateid, version) "
                "VALUES ('client', %s, 1) ON CONFLICT (aggregatetype, aggregateid) "
                "DO UPDATE SET version = v.version + 1 RETURNING v.version", (agg,)).fetchone()[0]
            envelope = build_envelope(event_id=event_id, aggregate_type="client", aggregate_id=agg,
                                      action="updated", version=version, occurred_at=now, source="bench",
                                      payload={"id": i % 200, "name": f"Client {i}"})
            conn.execute("INSERT INTO ttsync_outbox (id, aggregatetype, aggregateid, type, payload, "
                         "aggregate_version, occurred_at) VALUES (%s, 'client', %s, 'client.updated', %s, %s, %s)",
                         (event_id, agg, Jsonb(envelope), version, now))
            conn.execute("SELECT pg_notify('ttsync_outbox', 'client')")
        out[str(event_id)] = time.time()
    conn.close()
    queue.put(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--pad", type=int, default=800, help="extra bytes per payload (~1 KB events)")
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", default="kafka-python,confluent",
                        help="the Kafka clients to measure, comma-separated (confluent: librdkafka)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    configure_logging("WARNING", "json")
    bootstrap, server = kafka_bootstrap(), postgres_url()
    rows: list[tuple[str, str]] = []
    out: dict[str, dict] = {}  # type: ignore[type-arg]
    for client in args.clients.split(","):
        name = CLIENT_NAMES[client]
        with scratch_database(server) as db:
            tp = throughput(db, bootstrap, args.events, args.pad, client)
        with scratch_database(server) as db:
            lat = latency(db, bootstrap, args.rate, args.seconds, start_relay=ttsync_relay_on(client))
        out[client] = {"throughput": tp, "latency": lat}
        rows += [
            (f"[{name}] events", f"{tp['events']:,} x ~{tp['avg_value_bytes']} B"),
            (f"[{name}] bare producer", f"{tp['bare_eps']:,.0f} events/s"),
            (f"[{name}] ttsync relay", f"{tp['relay_eps']:,.0f} events/s"),
            (f"[{name}] relay / bare producer", f"{tp['ratio']:.0%}  (target >= 70%)"),
            (f"[{name}] commit-to-Kafka at {lat['rate_achieved']:.0f}/s (target {lat['rate_target']}/s)",
             f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms (target <= 25 ms), max {lat['max_ms']:.1f} ms,"
             f" {lat['received']}/{lat['events']} received"),
        ]
    with scratch_database(server) as db:
        out["ceiling"] = relay_ceiling(db, args.events, args.pad)
    rows.append(("relay with an instant broker (its PostgreSQL work and its Python: the ceiling of any client)",
                 f"{out['ceiling']['relay_eps']:,.0f} events/s"))
    print_table("relay benchmark (PostgreSQL -> Kafka, same run)", rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
