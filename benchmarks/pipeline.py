"""Whole-pipeline benchmark, two figures:

1. commit-to-QBO latency, end to end: TimeTracker transactions at a steady rate through the capture triggers,
   `ttsync relay` and `ttsync consume` (processes of their own) into the sandbox; per event from the
   transaction's timestamp (outbox occurred_at) to the consumer recording QBO's answer (processed_at);
2. memory: peak RSS (VmHWM) of `ttsync relay` draining a backlog of 1,000,000 outbox rows, and of
   `ttsync consume` working through that backlog for a bounded time (memory must not grow with the backlog).

    python3 -m benchmarks.pipeline [--rate 20] [--seconds 30] [--backlog 1000000] [--consume-seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import requests
from sqlalchemy import text
from sqlalchemy.orm import Session

from benchmarks._env import kafka_bootstrap, percentile, postgres_url, print_table, scratch_database
from benchmarks.relay import SEED_SQL
from consumer.group_consumer import consumer_topics
from producer.database import make_engine
from producer.kafka_publisher import ensure_topics
from producer.timetracker_schema import Client, Project, User
from producer.trigger_capture import install_triggers
from schemas.contract import dlq_topic
from tests.timetracker_data import base_rows, new_invoice
from ttsync.logging_setup import configure_logging
from ttsync.qbo_sandbox.server import SandboxConfig, SandboxServer

REALM = "9130000000000001"


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def ttsync_env(db_url: str, bootstrap: str, prefix: str, sandbox: SandboxServer, token: str) -> dict[str, str]:
    return {**os.environ, "TTSYNC_DATABASE_URL": db_url, "TTSYNC_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "TTSYNC_TOPIC_PREFIX": prefix, "TTSYNC_GROUP_ID": f"{prefix}-group", "TTSYNC_QBO_BASE_URL": sandbox.url,
            "TTSYNC_QBO_TOKEN_URL": sandbox.token_url, "TTSYNC_QBO_REALM_ID": REALM,
            "TTSYNC_QBO_REFRESH_TOKEN": token, "TTSYNC_SECRET_KEY": "bench-passphrase-0123456",
            # The fixtures' invoices are in USD: the install's Settings.currency, which the client's customer
            # (made before any invoice) takes; left at TimeTracker's EUR, QBO refuses every invoice (Fault 6000).
            "TTSYNC_DEFAULT_CURRENCY": "USD", "TTSYNC_LOG_LEVEL": "WARNING",
            "TTSYNC_LOG_FORMAT": "json", "TTSYNC_QBO_REQUESTS_PER_MINUTE": "60000",
            "TTSYNC_QBO_BATCH_REQUESTS_PER_MINUTE": "6000"}


LOG_DIR = Path(os.environ.get("TTSYNC_BENCH_LOG_DIR", "/tmp"))
_logs: dict[int, Path] = {}  # pid -> the log of a process start() made


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A ttsync process whose log (warnings and errors, JSON) goes to a file, so a failed run can say why."""
    log = LOG_DIR / f"ttsync-bench-{args[0]}-{os.getpid()}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "ttsync", *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=fh)
    _logs[proc.pid] = log
    return proc


def log_tails(procs: list[subprocess.Popen[bytes]], lines: int = 15) -> str:
    """The last lines each process logged, for an assertion's message."""
    tails = []
    for p in procs:
        log = _logs[p.pid]
        last = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []
        tails.append(f"--- {log} (exit {p.returncode})\n" + "\n".join(last))
    return "\n".join(tails)


def setup(db_url: str, bootstrap: str) -> tuple[str, SandboxServer, str]:
    prefix = f"pipe{uuid.uuid4().hex[:6]}"
    ensure_topics(bootstrap, consumer_topics(prefix, [10, 60, 300]), 3, 1)
    ensure_topics(bootstrap, [dlq_topic(prefix)], 1, 1)
    # QBO's limits off: this measures the pipeline, not the 500 requests a minute (benchmarks.consumer does).
    sandbox = SandboxServer(SandboxConfig(port=0, throttle_enabled=False)).start()
    token = requests.post(f"{sandbox.url}/__admin/tokens", json={"realm_id": REALM}, timeout=10).json()
    return prefix, sandbox, token["refresh_token"]


def latency(server_url: str, bootstrap: str, rate: int, seconds: float) -> dict:
    with scratch_database(server_url) as db_url:
        engine = make_engine(db_url)
        with engine.begin() as conn:
            install_triggers(conn, source="bench")
        prefix, sandbox, token = setup(db_url, bootstrap)
        env = ttsync_env(db_url, bootstrap, prefix, sandbox, token)
        procs = [start(["relay", "--no-create-topics"], env), start(["consume", "--no-create-topics"], env)]
        try:
            with Session(engine) as s:
                user, client, project = base_rows(s)
                s.commit()
                ids = (user.id, client.id, project.id)
            time.sleep(5)  # both processes up and the consumer in its group before the clock starts
            n_total = int(rate * seconds)
            started = time.perf_counter()
            for n in range(n_total):
                with Session(engine) as s:
                    new_invoice(s, s.get_one(User, ids[0]), s.get_one(Client, ids[1]), s.get_one(Project, ids[2]),
                                number=f"E2E-{n}", items=2, status="sent")
                    s.commit()
                time.sleep(max(0.0, started + (n + 1) / rate - time.perf_counter()))
            deadline = time.time() + 120
            query = text("SELECT EXTRACT(EPOCH FROM (p.processed_at - o.occurred_at)) FROM ttsync_outbox o "
                         "JOIN ttsync_processed_events p ON p.event_id = o.id::text WHERE o.type = 'invoice.created'")
            while time.time() < deadline:
                with engine.connect() as conn:
                    lat = [float(r[0]) for r in conn.execute(query)]
                if len(lat) >= n_total:
                    break
                time.sleep(1)
            rss = {"relay": peak_rss_mb(procs[0].pid), "consumer": peak_rss_mb(procs[1].pid)}
        finally:
            for p in procs:
                p.terminate()
                p.wait(30)
            sandbox.stop()
            engine.dispose()
    assert len(lat) >= n_total, f"only {len(lat)} of {n_total} invoices reached QBO\n{log_tails(procs)}"
    lat.sort()
    return {"events": n_total, "rate": rate, "p50_ms": percentile(lat, 50) * 1000,
            "p99_ms": percentile(lat, 99) * 1000, "max_ms": lat[-1] * 1000, "steady_rss_mb": rss}


def backlog_memory(server_url: str, bootstrap: str, backlog: int, consume_seconds: float) -> dict:
    with scratch_database(server_url) as db_url:
        engine = make_engine(db_url)
        prefix, sandbox, token = setup(db_url, bootstrap)
        env = ttsync_env(db_url, bootstrap, prefix, sandbox, token)
        try:
            filled = time.perf_counter()
            step = 100_000
            for offset in range(0, backlog, step):
                with engine.begin() as conn:
                    conn.execute(SEED_SQL, {"n": min(step, backlog - offset), "pad": 200})
            fill_s = time.perf_counter() - filled
            relay = start(["relay", "--no-create-topics"], env)
            started, peak = time.perf_counter(), 0.0
            while True:
                peak = max(peak, peak_rss_mb(relay.pid))
                with engine.connect() as conn:
                    left = conn.execute(text("SELECT count(*) FROM ttsync_outbox WHERE published_at IS NULL")).scalar()
                if not left:
                    break
                assert relay.poll() is None, f"the relay died\n{log_tails([relay])}"
                time.sleep(2)
            relay_s = time.perf_counter() - started
            peak = max(peak, peak_rss_mb(relay.pid))
            relay.terminate()
            relay.wait(30)

            consumer = start(["consume", "--no-create-topics"], env)
            samples: list[float] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(2):
                    samples.append(peak_rss_mb(consumer.pid))

            sampler = threading.Thread(target=sample)
            sampler.start()
            time.sleep(consume_seconds)
            stop.set()
            sampler.join()
            with engine.connect() as conn:
                done = conn.execute(text("SELECT count(*) FROM ttsync_processed_events")).scalar() or 0
            consumer.terminate()
            consumer.wait(60)
        finally:
            sandbox.stop()
            engine.dispose()
    half = samples[: max(1, len(samples) // 2)]
    return {"backlog": backlog, "fill_s": fill_s, "relay_drain_s": relay_s, "relay_eps": backlog / relay_s,
            "relay_peak_rss_mb": peak, "consumer_seconds": consume_seconds, "consumer_events": done,
            "consumer_peak_rss_mb_first_half": max(half), "consumer_peak_rss_mb": max(samples or [0.0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--consume-seconds", type=float, default=60)
    parser.add_argument("--json")
    args = parser.parse_args()
    configure_logging("WARNING", "json")
    server, bootstrap = postgres_url(), kafka_bootstrap()
    lat = latency(server, bootstrap, args.rate, args.seconds)
    print_table(f"commit-to-QBO latency, {lat['events']} invoices at {args.rate}/s (relay + consumer processes)", [
        ("p50", f"{lat['p50_ms']:.0f} ms"), ("p99", f"{lat['p99_ms']:.0f} ms"), ("max", f"{lat['max_ms']:.0f} ms"),
        ("relay peak RSS", f"{lat['steady_rss_mb']['relay']:.0f} MB"),
        ("consumer peak RSS", f"{lat['steady_rss_mb']['consumer']:.0f} MB"),
    ])
    mem = backlog_memory(server, bootstrap, args.backlog, args.consume_seconds)
    print_table(f"memory with a backlog of {mem['backlog']:,} outbox rows", [
        ("relay drain", f"{mem['relay_drain_s']:.0f} s ({mem['relay_eps']:,.0f} events/s)"),
        ("relay peak RSS", f"{mem['relay_peak_rss_mb']:.0f} MB"),
        (f"consumer, {mem['consumer_seconds']:.0f} s into the backlog", f"{mem['consumer_events']:,} events"),
        ("consumer peak RSS (first half / whole)",
         f"{mem['consumer_peak_rss_mb_first_half']:.0f} / {mem['consumer_peak_rss_mb']:.0f} MB"),
    ])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"latency": lat, "memory": mem}, fh, indent=2)


if __name__ == "__main__":
    main()
