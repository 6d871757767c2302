"""Consumer benchmark, two figures from one run:

1. events/s through the ttsync consumer against the sandbox with throttling off, next to a bare kafka-python
   consumer reading the same topic (the pipeline's overhead as a ratio);
2. QBO requests per minute per realm with QBO's real limits on (500/min): target >= 95% of what the limits
   allow, with zero 429 answers.

    python3 -m benchmarks.consumer [--events 2000] [--limit-seconds 70]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import threading
import time
import uuid

import requests
from kafka import KafkaConsumer, KafkaProducer

from benchmarks._env import kafka_bootstrap, postgres_url, print_table, scratch_database
from benchmarks.sandbox import start_sandbox_process
from consumer.group_consumer import consumer_topics
from producer.kafka_publisher import ensure_topics
from schemas.contract import SCHEMA_VERSION, dlq_topic, topic_for
from ttsync.logging_setup import configure_logging
from ttsync.settings import Settings
from ttsync.wiring import build_consumer, build_parts

REALM = "9130000000000001"


def produce_client_events(bootstrap: str, prefix: str, count: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    now = dt.datetime.now(dt.UTC).isoformat()
    for i in range(count):
        event_id = str(uuid.uuid4())
        envelope = {"event_id": event_id, "event_type": "client.created", "aggregate_type": "client",
                    "aggregate_id": str(i + 1), "aggregate_version": 1, "occurred_at": now,
                    "schema_version": SCHEMA_VERSION, "source": "bench",
                    "payload": {"id": i + 1, "name": f"Bench Client {i + 1} {uuid.uuid4().hex[:6]}",
                                "email": f"c{i}@example.com", "status": "active"}}
        producer.send(topic_for("client", prefix), key=str(i + 1).encode(), value=json.dumps(envelope).encode(),
                      headers=[("id", event_id.encode())])
    producer.flush()
    producer.close()


def settings_for(db: str, bootstrap: str, prefix: str, sandbox: str, token: str, **extra: object) -> Settings:
    return Settings(database_url=db, kafka_bootstrap_servers=bootstrap, topic_prefix=prefix,
                    group_id=f"bench-{uuid.uuid4().hex[:6]}", qbo_base_url=sandbox,
                    qbo_token_url=f"{sandbox}/oauth2/v1/tokens/bearer", qbo_realm_id=REALM,
                    qbo_refresh_token=token, secret_key="bench-passphrase-0123456", log_level="WARNING", **extra)  # type: ignore[arg-type]


def bare_rate(bootstrap: str, topic: str, count: int) -> float:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"bare-{uuid.uuid4().hex[:6]}",
                             auto_offset_reset="earliest", enable_auto_commit=False)
    seen = 0
    started = None
    while seen < count:
        for recs in consumer.poll(timeout_ms=500).values():
            if started is None:
                started = time.perf_counter()
            for r in recs:
                json.loads(r.value)
                seen += 1
        consumer.commit()
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return count / elapsed


def run_consumer(settings: Settings, count: int, max_seconds: float) -> tuple[float, dict]:
    parts = build_parts(settings)
    worker = build_consumer(settings, parts)
    first: list[float] = []

    def progress(stats):  # type: ignore[no-untyped-def]
        if not first:
            first.append(time.perf_counter())

    stats = worker.run(until=lambda s: s.applied + s.skipped + s.duplicates + s.dead_lettered >= count,
                       max_seconds=max_seconds, on_progress=progress)
    end = time.perf_counter()
    worker.close()
    done = stats.applied + stats.skipped + stats.duplicates + stats.dead_lettered
    return done / (end - (first[0] if first else end)), stats.__dict__


def limits_run(bootstrap: str, server: str, seconds: float, batch_min: int) -> dict[str, object]:
    proc, sandbox = start_sandbox_process()  # throttling on: 500/min, 10 concurrent, 40 batches/min per realm
    try:
        token = requests.post(f"{sandbox}/__admin/tokens", json={}, timeout=10).json()["refresh_token"]
        prefix = f"cl{uuid.uuid4().hex[:6]}"
        ensure_topics(bootstrap, [*consumer_topics(prefix, [10, 60, 300]), dlq_topic(prefix)], 3, 1)
        needed = int(seconds * (1300 if batch_min else 500) / 60) + 200
        produce_client_events(bootstrap, prefix, needed)
        with scratch_database(server) as db:
            settings = settings_for(db, bootstrap, prefix, sandbox, token, qbo_batch_min_backlog=batch_min,
                                    consumer_max_poll_records=300)
            thread = threading.Thread(target=run_consumer, args=(settings, needed, seconds))
            thread.start()
            thread.join()
        log = requests.get(f"{sandbox}/__admin/requests?limit=100000", timeout=30).json()["requests"]
        stats = requests.get(f"{sandbox}/__admin/stats", timeout=10).json()
    finally:
        proc.terminate()
        proc.wait(10)
    api = sorted(r["ts"] for r in log if r["path"].startswith("/v3/") and r["status"] != 429)
    start = api[0] + 5  # past the first burst
    window = [t for t in api if start <= t < start + 60]
    busiest = max(sum(1 for t in api if s <= t < s + 60) for s in api[: max(1, len(api) - 1)])
    # customers written in the same minute: the sandbox stamps each with its creation time
    return {"requests_in_minute": len(window), "efficiency": len(window) / 500, "busiest_60s_window": busiest,
            "throttled_429": stats["status_counts"].get("429", 0),
            "writes_in_minute": _writes_between(sandbox_log=log, start=start)}


def _writes_between(sandbox_log: list[dict], start: float) -> int:
    return sum(r["writes"] for r in sandbox_log
               if r["path"].startswith("/v3/") and r["status"] == 200 and start <= r["ts"] < start + 60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--limit-seconds", type=float, default=70.0)
    parser.add_argument("--json")
    args = parser.parse_args()
    configure_logging("WARNING", "json")
    bootstrap, server = kafka_bootstrap(), postgres_url()
    results: dict[str, object] = {}

    # 1. throughput, throttling off
    proc, sandbox = start_sandbox_process("--no-throttle")
    try:
        token = requests.post(f"{sandbox}/__admin/tokens", json={}, timeout=10).json()["refresh_token"]
        prefix = f"cb{uuid.uuid4().hex[:6]}"
        ensure_topics(bootstrap, [*consumer_topics(prefix, [10, 60, 300]), dlq_topic(prefix)], 3, 1)
        produce_client_events(bootstrap, prefix, args.events)
        bare = bare_rate(bootstrap, topic_for("client", prefix), args.events)
        with scratch_database(server) as db:
            # one request per event (no batching): the figure is the pipeline's own cost per event
            settings = settings_for(db, bootstrap, prefix, sandbox, token, qbo_requests_per_minute=1_000_000,
                                    qbo_burst=1000, qbo_batch_min_backlog=0)
            rate, stats = run_consumer(settings, args.events, 600)
        created = requests.get(f"{sandbox}/__admin/stats", timeout=10).json()["writes"][REALM]
        results["throughput"] = {"events": args.events, "bare_eps": bare, "ttsync_eps": rate,
                                 "ratio": rate / bare, "customers_created": created, "stats": stats}
    finally:
        proc.terminate()
        proc.wait(10)

    # 2. QBO's real limits on, one request per write: how close to 500/min, and is there ever a 429?
    # 3. the same with the batch endpoint for the backlog: how many writes per minute within the limits?
    for name, batch_min in (("limits", 0), ("limits_batch", 10)):
        results[name] = limits_run(bootstrap, server, args.limit_seconds, batch_min)

    tp, lim, bat = results["throughput"], results["limits"], results["limits_batch"]
    print_table("consumer benchmark (same run)", [
        ("events", f"{tp['events']:,} client.created -> QBO Customer creates"),  # type: ignore[index]
        ("bare kafka-python consumer", f"{tp['bare_eps']:,.0f} events/s"),  # type: ignore[index]
        ("ttsync consumer (sandbox, throttling off)", f"{tp['ttsync_eps']:,.0f} events/s"),  # type: ignore[index]
        ("ttsync / bare", f"{tp['ratio']:.1%}"),  # type: ignore[index]
        ("QBO requests in a steady minute (limit 500)", f"{lim['requests_in_minute']}"),  # type: ignore[index]
        ("efficiency vs QBO's limit", f"{lim['efficiency']:.1%}  (target >= 95%)"),  # type: ignore[index]
        ("busiest 60 s window", f"{lim['busiest_60s_window']}  (must stay <= 500)"),  # type: ignore[index]
        ("429 answers", f"{lim['throttled_429']}  (target 0)"),  # type: ignore[index]
        ("with batching: QBO writes in a steady minute",
         f"{bat['writes_in_minute']} in {bat['requests_in_minute']} requests, "  # type: ignore[index]
         f"{bat['throttled_429']} x 429"),  # type: ignore[index]
    ])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=str)


if __name__ == "__main__":
    main()
