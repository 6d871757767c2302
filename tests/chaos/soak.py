"""The soak (#21): TimeTracker changes for half an hour through the real pipeline while a seeded nemesis injects
overlapping faults from the chaos catalogue, then the invariant; the relay's and the consumers' memory and the
size of ttsync's tables are sampled all along.

    python3 -m tests.chaos.soak                      # 100,000 changes over 30 minutes, a random seed
    python3 -m tests.chaos.soak --seed 7 --minutes 3 --changes 6000 --warmup-minutes 1

It starts a durable PostgreSQL and a broker of its own (deploy/local: it kills and restarts both) and a
sandbox. The report (stdout, and ``--json``) holds the seed, the schedule of faults, the verdict, RSS per role
over time and table sizes over time. Exit 0 when the invariant holds, memory ends within 20% of the warm-up
peak and the outbox keeps nothing past its retention; 1 otherwise. ``tests/chaos/test_soak.py`` runs 3 minutes
of it in the suite."""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from consumer.retry_policy import RetryPolicy
from schemas.contract import AGGREGATE_TYPES, Header, all_topics
from tests.chaos.harness import ChaosRun, Proc, chaos_run
from tests.chaos.invariant import Verdict, acknowledged_missing
from tests.chaos.workload import Workload
from tests.kafka_helpers import read_topics
from tests.services import LocalBroker, LocalPostgres, private_broker, private_postgres

FAULTS = ("relay_kill9", "consumer_kill9", "broker_restart", "postgres_restart", "qbo_5xx", "storm_429",
          "token_expiry", "rebalance")
# Outages of minutes, waited out in place (no process may exit for a supervisor): once each in a long soak.
LONG_OUTAGES = (("broker_restart", 150.0), ("postgres_restart", 150.0))
LONG_SOAK_S = 20 * 60
OUTBOX_RETENTION_H = 0.05  # 3 minutes: long enough for the invariant's slack, short enough to see the plateau
# How long a payment may wait for its invoice: production's default (6 h), not the 6 minutes the short scenarios
# use. The soak's 150 s outages leave backlogs through which a payment's invoice (or its larger total) comes
# minutes late; with 6 minutes, the half-hour soak of seed 1202 dead-lettered 452 valid payments.
DEPENDENCY_WAIT_MAX_H = RetryPolicy().dependency_wait_max_s / 3600
PURGE_SLACK_S = 150  # the relay purges every 60 s; a relay killed or a database down delays one round
RSS_BOUND = 1.2  # the end within 20% of the warm-up peak
SAMPLE_EVERY_S = 10.0


@dataclass(frozen=True)
class Strike:
    at_s: float
    fault: str
    hold_s: float


def schedule(seed: int, duration_s: float, mean_gap_s: float) -> list[Strike]:
    """The nemesis's plan, from the seed alone: faults arrive as a Poisson process (so they overlap), each held
    3-15 s where holding means something; a soak of 20 minutes or more also takes the broker and the database
    away for minutes, once each, in its middle half."""
    rng = random.Random(seed)
    strikes, at = [], rng.expovariate(1 / mean_gap_s)
    while at < duration_s * 0.9:  # the last tenth runs clean, so the drain is not a fault of its own
        strikes.append(Strike(round(at, 1), rng.choice(FAULTS), round(rng.uniform(3, 15), 1)))
        at += rng.expovariate(1 / mean_gap_s)
    if duration_s >= LONG_SOAK_S:
        for fault, hold_s in LONG_OUTAGES:
            strikes.append(Strike(round(rng.uniform(0.25, 0.7) * duration_s, 1), fault, hold_s))
    return sorted(strikes, key=lambda s: s.at_s)


@dataclass
class Sample:
    at_s: float
    rss_kb: dict[str, int]  # role -> largest RSS among its live processes
    table_bytes: dict[str, int]
    outbox_rows: int
    outbox_stale: int  # published rows older than purge_bound_s: what the purge should have removed


@dataclass
class Report:
    seed: int
    minutes: float
    changes: int
    strikes: list[dict[str, Any]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    verdict: Verdict = field(default_factory=Verdict)
    acknowledged_missing: int = 0
    rss: dict[str, dict[str, int]] = field(default_factory=dict)  # role -> warm-up peak, end
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    storage: str = "?"  # as the database reported it (harness.storage_of)
    brokers: int = 0
    restarts: int = 0  # processes that exited on their own and the supervisor started again

    @property
    def ok(self) -> bool:
        return not self.problems


class Nemesis:
    """Plays the schedule: each strike in a thread of its own, so that they overlap; one broker fault and one
    database fault at a time (a second one waits for the first)."""

    def __init__(self, run: ChaosRun, broker: LocalBroker, pg: LocalPostgres, strikes: list[Strike],
                 seed: int) -> None:
        self.run, self.broker, self.pg, self.strikes = run, broker, pg, strikes
        self.rng = random.Random(seed + 1)
        self.locks = {"broker": threading.Lock(), "postgres": threading.Lock(), "qbo": threading.Lock(),
                      "procs": threading.Lock()}
        self.done: list[dict[str, Any]] = []
        self.database_away: list[tuple[float, float | None]] = []  # (down, up) on time.monotonic()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._player: threading.Thread | None = None

    def supervise(self) -> None:
        """What systemd or Kubernetes does, every 2 s: a process that exited on its own is started again, and
        counted (``Proc.restarts``): it should have waited its outage out in place."""
        while not self._stop.wait(2):
            with self.locks["procs"]:
                self.run.supervise()

    def start(self) -> None:
        started = time.monotonic()
        threading.Thread(target=self.supervise, name="supervisor", daemon=True).start()

        def play() -> None:
            for strike in self.strikes:
                if self._stop.wait(max(0.0, started + strike.at_s - time.monotonic())):
                    return
                t = threading.Thread(target=self._strike, args=(strike,), name=strike.fault, daemon=True)
                t.start()
                self._threads.append(t)

        self._player = threading.Thread(target=play, name="nemesis", daemon=True)
        self._player.start()

    def stop(self) -> None:
        """No new strikes; wait for those under way to end (each restores what it broke)."""
        self._stop.set()
        if self._player is not None:
            self._player.join(30)
        for t in self._threads:
            t.join(120)

    def _strike(self, strike: Strike) -> None:
        try:
            note = getattr(self, strike.fault)(strike.hold_s)
        except Exception as exc:  # noqa: BLE001 - the report says which strike failed; the invariant decides
            note = f"failed: {type(exc).__name__}: {exc}"
        self.done.append({**asdict(strike), "note": note})

    def _live(self, kind: str) -> list[Proc]:
        return [p for p in self.run.procs if p.name.startswith(kind) and p.alive and not p.retired]

    def _kill9_one(self, kind: str) -> str:
        """kill -9 of one live ``kind`` process, started again at once (its supervisor's part)."""
        with self.locks["procs"]:
            live = self._live(kind)
            if not live:
                return f"no {kind} alive"
            victim = self.rng.choice(live)
            victim.kill9()
            victim.start()
        return victim.name

    def relay_kill9(self, _hold: float) -> str:
        return self._kill9_one("relay")

    def consumer_kill9(self, _hold: float) -> str:
        return self._kill9_one("consumer")

    def broker_restart(self, hold: float) -> str:
        with self.locks["broker"]:
            self.broker.kill9()
            time.sleep(hold)
            self.broker.start()
        return f"broker down {hold:.0f} s"

    def postgres_restart(self, hold: float) -> str:
        with self.locks["postgres"]:
            killed = self.pg.kill9()
            self.database_away.append((time.monotonic(), None))
            time.sleep(hold)
            self.pg.start()
            self.database_away[-1] = (self.database_away[-1][0], time.monotonic())
        return f"kill -9 of {killed} PostgreSQL processes, down {hold:.0f} s"

    def _sandbox_for(self, hold: float, config: dict[str, Any], normal: dict[str, Any]) -> None:
        with self.locks["qbo"]:
            self.run.pipe.admin("config", config)
            try:
                time.sleep(hold)
            finally:
                self.run.pipe.admin("config", normal)

    def qbo_5xx(self, hold: float) -> str:
        self._sandbox_for(hold, {"error_rate": 0.2}, {"error_rate": 0.0})
        return f"20% 5xx for {hold:.0f} s"

    def storm_429(self, hold: float) -> str:
        self._sandbox_for(hold, {"throttle_rate": 0.7}, {"throttle_rate": 0.0})
        return f"70% 429 for {hold:.0f} s"

    def token_expiry(self, _hold: float) -> str:
        return f"{self.run.pipe.admin('expire-tokens', {})['expired']} tokens expired"

    def rebalance(self, hold: float) -> str:
        with self.locks["procs"]:
            joined = self.run.consumer()
        time.sleep(hold)
        with self.locks["procs"]:
            leaving = self._live("consumer")[0]
            leaving.retire()
        return f"{joined.name} joined, {leaving.name} left after {hold:.0f} s"


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


TABLES = text("SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
              "JOIN pg_namespace n ON n.oid = c.relnamespace "
              "WHERE c.relkind = 'r' AND c.relname LIKE 'ttsync%' AND n.nspname NOT IN ('pg_catalog')")


def purge_bound_s(now: float, database_away: list[tuple[float, float | None]]) -> float:
    """How old a published outbox row may be at ``now`` before the purge has missed it: retention, one purge
    round and its slack, plus the time the database was away since the row came of age. The relay cannot purge a
    database that is down: a row that came of age during a 150 s outage goes at the first round after it (seed
    1203, 15 s after one, found 3,314 such rows; 10 s later none). ``database_away``: (down, up) on ``now``'s
    clock, up None while it is down."""
    retention = OUTBOX_RETENTION_H * 3600
    away = 0.0
    while True:  # the outage time widens the window in which a row came of age, which may take in more of it
        since = now - PURGE_SLACK_S - away
        widened = sum(max(0.0, min(now if up is None else up, now) - max(down, since)) for down, up in database_away)
        if widened <= away:
            return retention + PURGE_SLACK_S + away
        away = widened


def sample(run: ChaosRun, engine: Engine, started: float,
           database_away: list[tuple[float, float | None]] | None = None) -> Sample | None:
    rss: dict[str, int] = {}
    for proc in run.procs:
        if proc.alive and proc.popen is not None:
            role = "relay" if proc.name.startswith("relay") else "consumer"
            rss[role] = max(rss.get(role, 0), rss_kb(proc.popen.pid))
    try:
        with engine.connect() as conn:
            tables = {name: int(size) for name, size in conn.execute(TABLES)}
            rows = int(conn.execute(text("SELECT count(*) FROM ttsync_outbox")).scalar_one())
            stale = int(conn.execute(text(
                "SELECT count(*) FROM ttsync_outbox WHERE published_at < now() - make_interval(secs => :s)"),
                {"s": purge_bound_s(time.monotonic(), list(database_away or []))}).scalar_one())
    except Exception:  # noqa: BLE001 - the database is down (a strike): no sample this time
        return None
    return Sample(round(time.monotonic() - started, 1), rss, tables, rows, stale)


@contextmanager
def sampling(run: ChaosRun, engine: Engine, started: float, into: list[Sample],
             database_away: list[tuple[float, float | None]]) -> Iterator[None]:
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(SAMPLE_EVERY_S):
            if (s := sample(run, engine, started, database_away)) is not None:
                into.append(s)

    thread = threading.Thread(target=loop, name="sampler", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


def history_from_kafka(run: ChaosRun) -> list[tuple[str, str, Any]]:
    """Every event the relays published, read back from the aggregate topics: the outbox purged most of them."""
    records = read_topics(run.pipe.bootstrap, all_topics(run.pipe.prefix), timeout_s=900, idle_s=5)
    out: list[tuple[str, str, Any]] = []
    seen: set[str] = set()
    for rec in records:
        event_id = dict(rec.headers or []).get(Header.EVENT_ID, b"").decode()
        if event_id in seen:  # a relay killed after the broker's ack and before its commit publishes again
            continue
        seen.add(event_id)
        kind = rec.topic.rsplit(".", 1)[1]
        if kind in AGGREGATE_TYPES:
            out.append((kind, (rec.key or b"").decode(), json.loads(rec.value)))
    return out


def published_events(history: list[tuple[str, str, Any]]) -> set[str]:
    return {str(envelope.get("event_id")) for _, _, envelope in history}


def judge_memory(samples: list[Sample], warmup_s: float) -> tuple[dict[str, dict[str, int]], list[str]]:
    out: dict[str, dict[str, int]] = {}
    problems = []
    for role in ("relay", "consumer"):
        seen = [(s.at_s, s.rss_kb[role]) for s in samples if s.rss_kb.get(role)]
        warm = [kb for at, kb in seen if at <= warmup_s]
        if not warm or not seen:
            problems.append(f"no memory samples of the {role}")
            continue
        peak, end = max(warm), seen[-1][1]
        out[role] = {"warmup_peak_kb": peak, "end_kb": end, "max_kb": max(kb for _, kb in seen)}
        if end > RSS_BOUND * peak:
            problems.append(f"{role} RSS ended at {end} kB, more than {RSS_BOUND:.0%} of its warm-up peak {peak} kB")
    return out, problems


def soak(*, minutes: float, changes: int, seed: int, warmup_minutes: float, mean_gap_s: float,
         settle_minutes: float = 30.0, log: Callable[[str], None] = print) -> Report:
    report = Report(seed=seed, minutes=minutes, changes=changes)
    strikes = schedule(seed, minutes * 60, mean_gap_s)
    started = time.monotonic()
    with private_postgres(durable=True) as pg, private_broker() as broker, \
            chaos_run(f"soak seed {seed}", bootstrap=broker.bootstrap, pg_url=pg.url,
                      settings={"outbox_retention_hours": OUTBOX_RETENTION_H,
                                "dependency_wait_max_hours": DEPENDENCY_WAIT_MAX_H}) as run:
        engine = run.pipe.engine
        report.storage, report.brokers = run.storage, run.brokers
        run.relay()
        run.consumer()
        run.consumer()
        log(f"soak: seed {seed}, {changes} changes over {minutes:g} min, {len(strikes)} strikes; logs in "
            f"{run.workdir}")
        workload = Workload(engine, changes=changes, seed=seed, tag="soak", duration_s=minutes * 60)
        nemesis = Nemesis(run, broker, pg, strikes, seed)
        with sampling(run, engine, started, report.samples, nemesis.database_away):
            workload.start()
            nemesis.start()
            while workload.progress < 1 and workload.error is None:
                time.sleep(10)
                log(f"soak: {time.monotonic() - started:5.0f} s, {workload.stats.committed} changes, "
                    f"{len(nemesis.done)} strikes done, outbox backlog {run.backlog()}")
            nemesis.stop()
            workload.join(120)
            run.supervise()
            history: list[tuple[str, str, Any]] = []

            def read_history() -> list[tuple[str, str, Any]]:
                history[:] = history_from_kafka(run)
                return history

            run.history = read_history
            said = [time.monotonic()]

            def say_where_it_is() -> None:
                if time.monotonic() - said[0] >= 30:
                    said[0] = time.monotonic()
                    log(f"soak: settling, {time.monotonic() - started:5.0f} s, outbox backlog {run.backlog()}, "
                        f"group lag {run.group_lag()}")
            settle_started = time.monotonic()
            verdict: Verdict = run.converge(timeout_s=settle_minutes * 60, while_waiting=say_where_it_is)
            log(f"soak: settled and judged in {time.monotonic() - settle_started:.0f} s")
        # the history converge's last verdict read (the whole topics, once more after its pause): not a third read
        missing = acknowledged_missing(engine, workload.acknowledged, also_held=published_events(history))
        report.strikes = sorted(nemesis.done, key=lambda d: d["at_s"])
        report.restarts = sum(p.restarts for p in run.procs)
        report.acknowledged_missing = len(missing)
        verdict.problems = verdict.problems[:20]
        report.verdict = verdict
        report.rss, memory_problems = judge_memory(report.samples, warmup_minutes * 60)
        stale = max((s.outbox_stale for s in report.samples), default=0)
        report.problems = [*([f"invariant: {verdict.lost} lost, {verdict.duplicated} duplicated"]
                             if not verdict.ok else []),
                           *([f"{len(missing)} confirmed commits gone: {missing[:5]}"] if missing else []),
                           *memory_problems,
                           *([f"{report.restarts} processes exited instead of waiting"] if report.restarts else []),
                           *([f"the outbox kept {stale} published rows past its retention"] if stale else []),
                           *([f"only {verdict.applied} aggregates reached QBO"] if verdict.applied < changes // 10
                             else [])]
        report.seconds = round(time.monotonic() - started, 1)
        if not report.ok:
            log(run.diagnostics())
    return report


def summary(report: Report) -> str:
    first, last = (report.samples[0], report.samples[-1]) if report.samples else (None, None)
    lines = [f"seed {report.seed}: {report.changes} changes over {report.minutes:g} min, {len(report.strikes)} "
             f"strikes ({', '.join(sorted({s['fault'] for s in report.strikes}))}), {report.seconds:.0f} s in all",
             f"invariant: {report.verdict.changes} changes, {report.verdict.applied} applied, {report.verdict.lost} "
             f"lost, {report.verdict.duplicated} duplicated; {report.acknowledged_missing} confirmed commits gone; "
             f"{report.restarts} supervisor restarts"]
    for role, rss in report.rss.items():
        lines.append(f"{role} RSS: warm-up peak {rss['warmup_peak_kb'] / 1024:.0f} MiB, end "
                     f"{rss['end_kb'] / 1024:.0f} MiB, max {rss['max_kb'] / 1024:.0f} MiB")
    if first and last:
        lines.append(f"outbox rows: {first.outbox_rows} at {first.at_s:.0f} s, max "
                     f"{max(s.outbox_rows for s in report.samples)}, {last.outbox_rows} at the end (retention "
                     f"{OUTBOX_RETENTION_H * 60:.0f} min)")
        for table in sorted(last.table_bytes):
            lines.append(f"{table}: {first.table_bytes.get(table, 0) / 2**20:.1f} MiB -> "
                         f"{last.table_bytes[table] / 2**20:.1f} MiB")
    lines += [f"PROBLEM: {p}" for p in report.problems] or ["bounded and correct"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.chaos.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=random.SystemRandom().randrange(1, 10**6))
    parser.add_argument("--warmup-minutes", type=float, default=5.0, help="memory peak of this first stretch is the "
                        "bound (default 5)")
    parser.add_argument("--mean-gap-s", type=float, default=20.0, help="mean time between strikes (default 20)")
    parser.add_argument("--settle-minutes", type=float, default=30.0, help="how long the pipeline may take to "
                        "drain after the last change before the run fails (default 30)")
    parser.add_argument("--json", type=Path, help="write the whole report here")
    args = parser.parse_args(argv)
    report = soak(minutes=args.minutes, changes=args.changes, seed=args.seed, warmup_minutes=args.warmup_minutes,
                  mean_gap_s=args.mean_gap_s, settle_minutes=args.settle_minutes,
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    print(summary(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(report), indent=1, default=str) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
