"""Runs the real pipeline as operators run it — `ttsync relay` and `ttsync consume` as separate processes —
against a real broker, PostgreSQL and the QBO sandbox, so that a scenario can kill, restart and starve any part.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from kafka import KafkaAdminClient
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from ops import dlq as dlq_tools
from ops.lag import measure
from producer.database import make_engine, scratch_database
from producer.outbox_tables import outbox
from producer.trigger_capture import install_triggers
from schemas.codec import UnknownSchemaVersion
from schemas.contract import dlq_topic
from tests.chaos.invariant import Verdict, check
from tests.pipeline import REALM, Pipeline, start_sandbox
from tests.services import unique

# Shorter than production (10, 60, 300 s) to keep the suite short: a record that failed in a fault comes back
# within seconds once it is over. A dependency (a payment waiting for its invoice's versions queued on another
# partition) climbs to the tier that fits the time it has waited (retry_policy._wait_for_dependency).
RETRY_DELAYS = [1, 5, 15, 45]
ENTITIES = ("Customer", "Invoice", "Purchase", "Payment", "Account")


@dataclass
class Proc:
    """One `ttsync` process (or ``module``'s) with its log file; restartable with the same command."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    module: str = "ttsync"
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    retired: bool = False  # stopped on purpose by the scenario: not to be started again
    restarts: int = 0  # by the supervisor, after the process exited on its own

    def start(self, **env: str) -> Proc:
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n==== start {self.starts} {time.strftime('%H:%M:%S')}\n".encode())
        log.flush()
        self.popen = subprocess.Popen([sys.executable, "-m", self.module, *self.args], env={**self.env, **env},
                                      stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill9(self) -> None:
        if self.alive:
            assert self.popen is not None
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(30)
            self.kills += 1

    def stop(self, timeout_s: float = 30) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode

    def retire(self) -> None:
        self.retired = True
        self.stop()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class ChaosRun:
    """One scenario's pipeline. ``report`` collects its row for the suite's table."""

    scenario: str
    pipe: Pipeline
    workdir: Path
    procs: list[Proc] = field(default_factory=list)
    junk_injected: int = 0
    # Records of an event contract no consumer reads (another major version), published by the scenario: each
    # must be dead-lettered with its reason (``unknown_schema_version``), never applied. Counted when judged.
    foreign_majors: Callable[[], int] | None = None
    # Every event ever published, when the outbox's retention purged them (a soak): read from Kafka instead.
    history: Callable[[], list[tuple[str, str, Any]]] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    storage: str = "?"  # storage_of the scenario's database
    brokers: int = 0  # brokers_of the scenario's Kafka cluster
    debezium_slot: str | None = None  # set when Debezium relays the outbox (see _slot_backlog)
    wal_target: str | None = None

    def env(self, **extra: str) -> dict[str, str]:
        level = os.environ.get("TTSYNC_CHAOS_LOG_LEVEL", "info")
        # The scenario's own settings (extra_env) and the call's override these defaults.
        return self.pipe.env(**{"TTSYNC_RETRY_TOPIC_DELAYS_S": json.dumps(RETRY_DELAYS),
                                "TTSYNC_DEPENDENCY_WAIT_MAX_HOURS": "0.1", "TTSYNC_LOG_LEVEL": level,
                                "TTSYNC_CONSUMER_UNJOINED_EXIT_S": "30", "TTSYNC_RETRY_BACKOFF_MAX_S": "2",
                                **self.extra_env, **extra})

    def relay(self, **env: str) -> Proc:
        proc = Proc(f"relay{len(self.procs)}", ["relay", "--no-create-topics"], self.env(**env),
                    self.workdir / f"relay{len(self.procs)}.log")
        self.procs.append(proc)
        return proc.start()

    def next_version_relay(self, **env: str) -> Proc:
        """A relay of the next event contract (tests.chaos.next_version), beside or instead of this one."""
        proc = Proc(f"relay{len(self.procs)}-next", [], self.env(**env), self.workdir / f"relay{len(self.procs)}.log",
                    module="tests.chaos.next_version")
        self.procs.append(proc)
        return proc.start()

    def consumer(self, **env: str) -> Proc:
        proc = Proc(f"consumer{len(self.procs)}", ["consume", "--no-create-topics"], self.env(**env),
                    self.workdir / f"consumer{len(self.procs)}.log")
        self.procs.append(proc)
        return proc.start()

    def supervise(self) -> None:
        """What systemd or Kubernetes does: a process that exited (not stopped on purpose) is started again."""
        for proc in self.procs:
            if proc.popen is not None and not proc.alive and not proc.retired:
                proc.restarts += 1
                proc.start()

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop()

    # -- observing -------------------------------------------------------------------------------------

    def backlog(self) -> int:
        if self.debezium_slot is not None:
            return self._slot_backlog()
        try:
            with Session(self.pipe.engine) as s:
                return int(s.scalar(select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None)))
                           or 0)
        except (sa_exc.OperationalError, sa_exc.InterfaceError):
            return -1

    def _slot_backlog(self) -> int:
        """With Debezium relaying, outbox rows are never marked published: what is in flight is the WAL between
        the slot's confirmed position and ``wal_target``, a position inside the last transaction that writes the
        outbox (Debezium confirms the positions of the outbox's commits only, never WAL written after them)."""
        if self.wal_target is None:
            return 1
        try:
            with self.pipe.engine.connect() as conn:
                behind = conn.execute(text(
                    "SELECT pg_wal_lsn_diff(CAST(:target AS pg_lsn), confirmed_flush_lsn) FROM pg_replication_slots "
                    "WHERE slot_name = :slot"), {"target": self.wal_target, "slot": self.debezium_slot}).scalar()
        except (sa_exc.OperationalError, sa_exc.InterfaceError):
            return -1
        return 1 if behind is None or behind > 0 else 0

    def group_lag(self) -> int:
        try:
            lag = measure(self.pipe.bootstrap, self.pipe.group)
        except Exception:  # noqa: BLE001 - group not there yet, broker restarting: not converged, either way
            return -1
        return sum(p.lag or 0 for p in lag.partitions)

    def verdict(self) -> Verdict:
        entities = self.pipe.admin(f"realms/{REALM}/entities")
        live = {k: entities.get(k, []) for k in ENTITIES}
        # A record of a foreign major version is no TimeTracker change of this contract: judged as injected junk.
        dead = [(d.event_type, None if d.error_code == UnknownSchemaVersion.code else d.key)
                for _, d in dlq_tools.scan(self.pipe.bootstrap, dlq_topic(self.pipe.prefix), timeout_s=5)]
        return check(self.pipe.engine, live, dead, self.pipe.writes_per_requestid(), junk_expected=self.junk_expected,
                     history=self.history() if self.history else None)

    @property
    def junk_expected(self) -> int:
        return self.junk_injected + (self.foreign_majors() if self.foreign_majors else 0)

    def converge(self, timeout_s: float = 300, while_waiting: Callable[[], None] | None = None) -> Verdict:
        """Wait until the invariant holds with nothing left in flight (outbox drained, group lag 0), then
        check it once more after a pause, so that a late retry or a duplicate would still be seen."""
        deadline = time.monotonic() + timeout_s
        verdict = Verdict()
        while time.monotonic() < deadline:
            self.supervise()
            if while_waiting:
                while_waiting()
            if self.backlog() == 0 and self.group_lag() == 0:
                verdict = self.verdict()
                if verdict.ok:
                    time.sleep(3)
                    if self.backlog() == 0 and self.group_lag() == 0:
                        return self.verdict()
            time.sleep(2)
        verdict = self.verdict()
        # A pipeline that never settles is a failure even when the books agree: something stays stuck (a
        # partition, a waiting commit) and only the deadline hid it.
        verdict.converged = False
        verdict.problems.append(f"not converged in {timeout_s}s: outbox backlog {self.backlog()}, "
                                f"group lag {self.group_lag()}")
        return verdict

    def dump(self) -> Path:
        """What QBO and the outbox hold, for the post-mortem of a failed scenario."""
        path = self.workdir / "state.json"
        with Session(self.pipe.engine) as s:
            events = [{"type": r.type, "aggregate": r.aggregateid, "version": r.aggregate_version,
                       "published": r.published_at is not None, "payload": r.payload}
                      for r in s.execute(select(outbox).order_by(outbox.c.seq))]
            state = {table: [dict(r._mapping) for r in s.execute(text(f"SELECT * FROM {table}"))]
                     for table in ("ttsync_entity_map", "ttsync_processed_events")}
        path.write_text(json.dumps({"qbo": self.pipe.admin(f"realms/{REALM}/entities"), "outbox": events, **state},
                                   default=str, indent=1))
        return path

    def diagnostics(self) -> str:
        return "\n".join(f"--- {p.name} (starts {p.starts}, kills {p.kills}, supervisor restarts {p.restarts}, "
                         f"rc {p.popen and p.popen.returncode})"
                         f"\n{p.tail()}" for p in self.procs)


def inject_junk(pipe: Pipeline, count: int, seed: int = 3) -> int:
    """Records no TimeTracker ever wrote: random bytes, wrong types, unknown types and versions, huge ones.
    Sent straight to the main topics; each must be dead-lettered and never stop the partition."""
    from kafka import KafkaProducer

    rng = random.Random(seed)
    kinds: list[Callable[[int], bytes]] = [
        lambda n: rng.randbytes(rng.randint(1, 300)),
        lambda n: b'{"event_type": 42, "aggregate_id": ["x"], "payload": "nope"}',
        lambda n: json.dumps({"schema_version": "9.0", "event_type": "invoice.created", "aggregate_type": "invoice",
                              "aggregate_id": f"junk{n}", "payload": {}}).encode(),
        lambda n: json.dumps({"schema_version": "1.0", "event_type": "timesheet.created",
                              "aggregate_type": "timesheet", "aggregate_id": f"junk{n}", "payload": {}}).encode(),
        lambda n: b'{"truncated": ' + b"9" * 200_000,
        lambda n: "\u0000\ud800 not json at all".encode("utf-8", "surrogatepass"),
    ]
    producer = KafkaProducer(bootstrap_servers=pipe.bootstrap, max_request_size=2_000_000)
    try:
        for n in range(count):
            topic = f"{pipe.prefix}.{rng.choice(['invoice', 'expense', 'payment', 'client'])}"
            producer.send(topic, key=f"junk{n}".encode(), value=kinds[n % len(kinds)](n))
        producer.flush(30)
    finally:
        producer.close()
    return count


def changes_per_scenario() -> int:
    return int(os.environ.get("TTSYNC_CHAOS_CHANGES", "2000"))


DURABILITY = ("fsync", "synchronous_commit", "full_page_writes")


def storage_of(db_url: str) -> str:
    """"durable" when the PostgreSQL server says fsync, synchronous_commit and full_page_writes are on, else
    "fast": what the server runs with, not what a script was asked for."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            settings = {name: conn.execute(text(f"SHOW {name}")).scalar_one() for name in DURABILITY}
    finally:
        engine.dispose()
    return "durable" if all(v == "on" for v in settings.values()) else "fast"


def brokers_of(bootstrap: str) -> int:
    """How many brokers the cluster's metadata lists."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="ttsync-chaos")
    try:
        return len(admin.describe_cluster()["brokers"])
    finally:
        admin.close()


@contextmanager
def chaos_run(scenario: str, *, bootstrap: str, pg_url: str, kafka_client: str = "kafka-python",
              settings: dict[str, Any] | None = None, **sandbox_config: Any) -> Iterator[ChaosRun]:
    """A scenario's pipeline: a fresh database on ``pg_url`` with capture triggers, topics of its own on
    ``bootstrap``, a sandbox (``sandbox_config``); relay and consumers on ``kafka_client`` (TTSYNC_KAFKA_CLIENT);
    ``settings`` override ttsync's (e.g. the topics' replication); everything the scenario started is stopped
    afterwards."""
    from tests.conftest import prepare_timetracker_db

    settings = settings or {}
    with scratch_database(pg_url, "chaos_") as db_url:
        engine = prepare_timetracker_db(db_url)
        with engine.begin() as conn:
            install_triggers(conn, source="chaos")
        config = {"requests_per_minute": 20000, "concurrent_requests": 20, "batch_requests_per_minute": 2000,
                  **sandbox_config}
        sandbox = start_sandbox(**config)
        try:
            token = requests.post(f"{sandbox.url}/__admin/tokens", json={"realm_id": REALM}, timeout=10).json()
            pipe = Pipeline(engine, db_url, bootstrap, unique("chaos"), unique("ttsync-chaos-"), sandbox,
                            overrides={"retry_topic_delays_s": RETRY_DELAYS, **settings},
                            refresh_token=token["refresh_token"])
            pipe.create_topics()
            slug = re.sub("[^a-z0-9]+", "-", scenario.lower())
            run = ChaosRun(scenario, pipe, Path(tempfile.mkdtemp(prefix=f"ttsync-chaos-{slug}-")),
                           # QBO's own limits (500 requests and 40 batches a minute) would make each scenario
                           # take many minutes; the throttling itself is proven by the 429-storm scenario and the
                           # consumer benchmark. A 429 without Retry-After waits 1 s here, not QBO's 60.
                           extra_env={"TTSYNC_QBO_THROTTLE_DEFAULT_WAIT_S": "1", "TTSYNC_QBO_REQUESTS_PER_MINUTE":
                                      "12000", "TTSYNC_QBO_BATCH_REQUESTS_PER_MINUTE": "1200",
                                      "TTSYNC_QBO_TIMEOUT_S": "5", "TTSYNC_KAFKA_CLIENT": kafka_client,
                                      **{f"TTSYNC_{k.upper()}": str(v) for k, v in settings.items()}},
                           storage=storage_of(db_url), brokers=brokers_of(bootstrap))
            try:
                yield run
            finally:
                run.stop_all()
        finally:
            sandbox.stop()
            engine.dispose()
