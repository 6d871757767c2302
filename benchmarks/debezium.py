"""Debezium relay vs `ttsync relay` (on kafka-python and on librdkafka), same run, same machine, same outbox rows:

1. events/s: a backlog of ``--events`` outbox rows committed at once, timed until the last is in Kafka;
2. commit-to-Kafka latency at a steady ``--rate`` (the writers and the measurement of benchmarks.relay).

Kafka Connect runs from deploy/local/connect.sh (a worker of its own on a free port).

    python3 -m benchmarks.debezium [--events 20000] [--rate 200] [--seconds 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic

from benchmarks._env import kafka_bootstrap, postgres_url, print_table, scratch_database
from benchmarks.relay import SEED_SQL, latency
from benchmarks.relay import throughput as relay_throughput
from producer.database import make_engine
from producer.outbox_status import drop_replication_slot, replication_slot
from schemas import topic_for
from ttsync.logging_setup import configure_logging

CONNECT = Path(__file__).resolve().parents[1] / "deploy" / "local" / "connect.sh"


class Worker:
    def __init__(self, bootstrap: str, state_dir: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.env = {**os.environ, "CONNECT_PORT": str(port), "KAFKA_BOOTSTRAP": bootstrap,
                    "CONNECT_STATE_DIR": state_dir, "CONNECT_GROUP": f"ttsync-connect-bench-{uuid.uuid4().hex[:6]}"}

    def sh(self, *args: str, **env: str) -> None:
        subprocess.run(["bash", str(CONNECT), *args], env={**self.env, **env}, check=True, timeout=900,
                       stdout=subprocess.DEVNULL)

    def relay(self, db_url: str, bootstrap: str, prefix: str) -> Callable[[], None]:
        """Register a connector for this database and prefix; wait until its slot streams. Returns the stopper."""
        slot = f"bench_{uuid.uuid4().hex[:8]}"
        env = {"TTSYNC_DATABASE_URL": db_url, "TTSYNC_TOPIC_PREFIX": prefix, "DEBEZIUM_SLOT": slot,
               "DEBEZIUM_CONNECTOR": f"bench-{slot}"}
        self.sh("register", **env)
        engine = make_engine(db_url)
        deadline = time.monotonic() + 60
        while not (replication_slot(engine, slot) or {}).get("active"):
            if time.monotonic() > deadline:
                raise RuntimeError("Debezium never took its replication slot")
            time.sleep(0.2)

        def stop() -> None:
            self.sh("unregister", **env)
            if not drop_replication_slot(engine, slot):
                raise RuntimeError(f"slot {slot} still held by Kafka Connect")
            engine.dispose()
        return stop


def debezium_throughput(worker: Worker, db_url: str, bootstrap: str, events: int, pad: int) -> dict:
    prefix = f"dbz{uuid.uuid4().hex[:6]}"
    topic = topic_for("client", prefix)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 3, 1, topic_configs={"message.timestamp.type": "LogAppendTime"})])
    admin.close()
    stop = worker.relay(db_url, bootstrap, prefix)
    try:
        engine = make_engine(db_url)
        with engine.begin() as conn:
            conn.execute(SEED_SQL, {"n": events, "pad": pad})
        committed = time.time()
        engine.dispose()
        consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                 group_id=f"dbz-{uuid.uuid4().hex[:6]}", enable_auto_commit=False)
        seen, last = 0, committed
        deadline = time.time() + 600
        while seen < events and time.time() < deadline:
            for recs in consumer.poll(timeout_ms=500).values():
                seen += len(recs)
                last = max([last] + [r.timestamp / 1000.0 for r in recs])
        consumer.close()
    finally:
        stop()
    return {"events": events, "received": seen, "seconds": round(last - committed, 2),
            "debezium_eps": seen / max(last - committed, 1e-6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--pad", type=int, default=800)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()
    configure_logging("WARNING", "json")
    bootstrap, server = kafka_bootstrap(), postgres_url()
    with tempfile.TemporaryDirectory() as state:
        worker = Worker(bootstrap, state)
        worker.sh("start")
        try:
            with scratch_database(server) as db:
                ours = relay_throughput(db, bootstrap, args.events, args.pad)
            with scratch_database(server) as db:
                ours_fast = relay_throughput(db, bootstrap, args.events, args.pad, "confluent")
            with scratch_database(server) as db:
                theirs = debezium_throughput(worker, db, bootstrap, args.events, args.pad)
            with scratch_database(server) as db:
                lat_ours = latency(db, bootstrap, args.rate, args.seconds)
            with scratch_database(server) as db:
                lat_theirs = latency(db, bootstrap, args.rate, args.seconds, start_relay=worker.relay)
        finally:
            worker.sh("stop")
    print_table("Debezium relay vs ttsync relay (PostgreSQL -> Kafka, same run)", [
        ("backlog", f"{args.events:,} outbox rows x ~{ours['avg_value_bytes']} B, committed at once"),
        ("bare producer: kafka-python / librdkafka",
         f"{ours['bare_eps']:,.0f} / {ours_fast['bare_eps']:,.0f} events/s"),
        ("ttsync relay on kafka-python", f"{ours['relay_eps']:,.0f} events/s"),
        ("ttsync relay on librdkafka", f"{ours_fast['relay_eps']:,.0f} events/s ({ours_fast['ratio']:.0%} of its bare "
                                       f"producer, target >= 70%; {ours_fast['relay_eps'] / theirs['debezium_eps']:.1f}"
                                       " x Debezium, target >= 5 x)"),
        ("Debezium (Kafka Connect, pgoutput, Outbox Event Router)",
         f"{theirs['debezium_eps']:,.0f} events/s ({theirs['received']:,} received)"),
        (f"commit-to-Kafka at {args.rate}/s, ttsync relay", f"p50 {lat_ours['p50_ms']:.1f} ms, "
                                                           f"p99 {lat_ours['p99_ms']:.1f} ms"),
        (f"commit-to-Kafka at {args.rate}/s, Debezium", f"p50 {lat_theirs['p50_ms']:.1f} ms, "
                                                       f"p99 {lat_theirs['p99_ms']:.1f} ms"),
    ])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"relay": ours, "relay_librdkafka": ours_fast, "debezium": theirs, "latency_relay": lat_ours,
                       "latency_debezium": lat_theirs}, fh, indent=2)


if __name__ == "__main__":
    main()
