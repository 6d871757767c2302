"""Backfill benchmark (`ttsync capture snapshot`), three figures from one run:

1. snapshot rate: records/s into the outbox, each record in its own transaction (version lock, state read,
   outbox row, progress row);
2. PostgreSQL's own ceiling on the same machine and the same payloads: COPY of the outbox rows in one go, and
   single-row INSERT transactions (the snapshot's shape without its reads and locks);
3. the time to drain the backfill into QBO at QBO's limits (the sandbox enforcing 500 requests/min and 40
   batch requests/min, the consumer at its default 95% of them), as QBO writes a minute against QBO's ceiling
   (40 batch requests of 30 + 460 single requests = 1,660 writes/min), with and without the adoption of the
   entities TimeTracker's old connector made (``TTSYNC_ADOPT_LEGACY``; a third of them seeded in QBO, as
   tests/backfill_data does): the same backlog, the same QBO, in one run.

    python3 -m benchmarks.backfill [--records 5000] [--drain-records 5000] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import time
import uuid
from typing import Any

import requests
from sqlalchemy import Engine, text

from benchmarks._env import kafka_bootstrap, postgres_url, print_table, scratch_database
from consumer import metrics
from producer.database import make_engine
from producer.outbox_snapshot import run_snapshot
from tests.backfill_data import seed_old_connector, seed_timetracker
from ttsync.logging_setup import configure_logging
from ttsync.qbo_sandbox.server import SandboxConfig, SandboxServer
from ttsync.settings import Settings
from ttsync.wiring import build_consumer, build_parts, build_relay, ensure_consumer_topics

REALM = "9130000000000001"
QBO_WRITES_PER_MIN = 40 * 30 + 460  # QBO's ceiling for one company: 40 batch requests of 30 within its 500


def _mix(records: int) -> dict[str, int]:
    """clients, invoices (a fifth of them paid, each with its payment) and expenses adding up to ``records``."""
    clients = max(1, records // 25)
    invoices = (records - clients) * 46 // 100
    payments = invoices // 5
    return {"clients": clients, "invoices": invoices, "expenses": records - clients - invoices - payments}


def ceilings(engine: Engine) -> dict[str, float]:
    """PostgreSQL alone: the snapshot's outbox rows COPYed in one statement, and inserted one per transaction."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, aggregatetype, aggregateid, type, payload::text, aggregate_version, "
                                 "occurred_at FROM ttsync_outbox ORDER BY seq")).all()
    with engine.begin() as conn:
        for table in ("bench_copy", "bench_insert"):
            conn.execute(text(f"CREATE TABLE {table} (LIKE ttsync_outbox INCLUDING DEFAULTS INCLUDING IDENTITY)"))
    buf = io.StringIO()
    for r in rows:
        payload = r[4].replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
        buf.write(f"{uuid.uuid4()}\t{r[1]}\t{r[2]}\t{r[3]}\t{payload}\t{r[5]}\t{r[6].isoformat()}\n")
    raw = engine.raw_connection()
    try:
        started = time.perf_counter()
        with raw.cursor() as cur, cur.copy("COPY bench_copy (id, aggregatetype, aggregateid, type, payload, "  # type: ignore[attr-defined]
                                           "aggregate_version, occurred_at) FROM STDIN") as copy:
            copy.write(buf.getvalue())
        raw.commit()
        copy_s = time.perf_counter() - started
    finally:
        raw.close()
    started = time.perf_counter()
    for r in rows:
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL synchronous_commit = off"))
            conn.execute(text("INSERT INTO bench_insert (id, aggregatetype, aggregateid, type, payload, "
                              "aggregate_version, occurred_at) VALUES (:id, :t, :a, :ty, CAST(:p AS jsonb), :v, :o)"),
                         {"id": uuid.uuid4(), "t": r[1], "a": r[2], "ty": r[3], "p": r[4], "v": r[5], "o": r[6]})
    insert_s = time.perf_counter() - started
    return {"copy_per_s": round(len(rows) / copy_s, 1), "insert_tx_per_s": round(len(rows) / insert_s, 1)}


def drain(db_url: str, bootstrap: str, records: int, adopt_legacy: bool) -> dict[str, Any]:
    """Seed, snapshot, relay, and time the consumer until every snapshot event has an outcome in QBO."""
    with scratch_database(db_url) as url:
        engine = make_engine(url)
        seeded = seed_timetracker(engine, **_mix(records))
        prefix = f"bf{uuid.uuid4().hex[:6]}"
        sandbox = SandboxServer(SandboxConfig(port=0)).start()  # QBO's own limits, throttling on

        def admin(path: str, body: Any = None) -> Any:
            url_ = f"{sandbox.url}/__admin/{path}"
            answer = requests.post(url_, json=body, timeout=60) if body is not None else requests.get(url_, timeout=60)
            answer.raise_for_status()
            return answer.json()

        try:
            seed_old_connector(engine, admin, REALM, seeded)
            report = run_snapshot(engine)
            token = admin("tokens", {"realm_id": REALM})
            settings = Settings(database_url=url, kafka_bootstrap_servers=bootstrap, topic_prefix=prefix,
                                group_id=f"{prefix}-group", qbo_base_url=sandbox.url, qbo_token_url=sandbox.token_url,
                                qbo_realm_id=REALM, qbo_refresh_token=token["refresh_token"],
                                secret_key="bench-passphrase-0123456",
                                adopt_legacy=adopt_legacy, retry_topic_delays_s=[10, 60, 300])
            ensure_consumer_topics(settings)
            relay = build_relay(settings, engine)
            try:
                relay.run(idle_exit=True)
            finally:
                relay.publisher.close()
            worker = build_consumer(settings, build_parts(settings))
            progress: list[tuple[float, int]] = []
            writes_before = admin("stats")["writes"].get(REALM, 0)
            calls_before = qbo_calls()
            started = time.perf_counter()

            def finished(s: Any) -> bool:
                n = s.applied + s.skipped + s.duplicates + s.dead_lettered
                if not progress or time.perf_counter() - progress[-1][0] > 30:
                    progress.append((time.perf_counter(), n))
                    print(f"   drain ({'adopt' if adopt_legacy else 'no adopt'}): {n:,}/{report.enqueued:,} "
                          f"after {time.perf_counter() - started:.0f}s", flush=True)
                return n >= report.enqueued

            try:
                stats = worker.run(until=finished, max_seconds=3 * 3600)
            finally:
                worker.close()
            seconds = time.perf_counter() - started
            calls = admin("stats")
            by_kind = {k: n - calls_before.get(k, 0) for k, n in qbo_calls().items() if n > calls_before.get(k, 0)}
        finally:
            sandbox.stop()
            engine.dispose()
    writes = calls["writes"].get(REALM, 0) - writes_before
    return {"records": seeded.records, "events": report.enqueued, "seconds": round(seconds, 1),
            "records_per_min": round(report.enqueued / seconds * 60, 1), "writes": writes,
            "writes_per_min": round(writes / seconds * 60, 1),
            "of_ceiling": round(writes / seconds * 60 / QBO_WRITES_PER_MIN, 3), "applied": stats.applied,
            "skipped": stats.skipped, "dead_lettered": stats.dead_lettered, "throttled_429": calls.get("throttled"),
            "status_counts": calls.get("status_counts"),
            "requests_by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1]))}


def qbo_calls() -> dict[str, int]:
    """The consumer's QBO requests so far, by entity and operation (its ``ttsync_qbo_requests_total``): where a
    drain's request budget went."""
    out: dict[str, int] = {}
    for family in metrics.REGISTRY.collect():
        if family.name != "ttsync_qbo_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = f"{sample.labels['entity']} {sample.labels['operation']} {sample.labels['outcome']}"
                out[key] = out.get(key, 0) + int(sample.value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=5000, help="records for the snapshot-rate figures")
    parser.add_argument("--drain-records", type=int, default=5000, help="records drained into QBO (0: skip)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    configure_logging("WARNING", "console")
    server = postgres_url()
    bootstrap = kafka_bootstrap()
    out: dict[str, Any] = {}
    with scratch_database(server) as url:
        engine = make_engine(url)
        seeded = seed_timetracker(engine, **_mix(args.records))
        report = run_snapshot(engine, chunk_size=500)
        out["snapshot"] = {"records": seeded.records, "enqueued": report.enqueued,
                           "seconds": round(report.elapsed_s, 2), "per_s": round(report.rate, 1)}
        out["ceiling"] = ceilings(engine)
        engine.dispose()
    rows = [("snapshot into the outbox", f"{out['snapshot']['per_s']:,.0f} records/s "
                                         f"({out['snapshot']['records']:,} in {out['snapshot']['seconds']} s)"),
            ("PostgreSQL COPY of the same rows", f"{out['ceiling']['copy_per_s']:,.0f} rows/s"),
            ("PostgreSQL one-row INSERT transactions", f"{out['ceiling']['insert_tx_per_s']:,.0f} rows/s")]
    if args.drain_records:
        for adopt in (True, False):
            key = "drain_adopt" if adopt else "drain_no_adopt"
            out[key] = drain(server, bootstrap, args.drain_records, adopt)
            d = out[key]
            rows.append((f"drain into QBO at its limits, {'with' if adopt else 'without'} adopting the old "
                         "connector's entities",
                         f"{d['writes']:,} writes in {d['seconds'] / 60:.1f} min = {d['writes_per_min']:,.0f}/min "
                         f"({d['of_ceiling']:.0%} of {QBO_WRITES_PER_MIN:,}), {d['throttled_429']} x 429"))
        extra = out["drain_adopt"]["seconds"] / out["drain_no_adopt"]["seconds"] - 1
        out["adoption_extra_time"] = round(extra, 3)
        rows.append(("time adoption adds to the drain", f"{extra:+.1%} (target <= 5%)"))
    print_table("ttsync capture snapshot (backfill)", rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
