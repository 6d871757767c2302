"""`ttsync capture snapshot`: one outbox event per existing TimeTracker record (an initial backfill).

Change capture only sees what changes from now on; a snapshot enqueues the current state of every record as
``<type>.snapshot``, which the consumer treats as an upsert (create, adopt or update). It is the equivalent of
Debezium's incremental snapshot, built on the same rules as live capture:

* Each record is enqueued in its own short transaction that first takes the aggregate's version (the row lock
  of ``ttsync_aggregate_versions``), then reads the record. A TimeTracker transaction changing the same record
  holds that lock until it commits, so the snapshot either reads its committed state with a later version, or
  commits first and the live event gets the later version. Either way the newest state wins in QBO. One record
  per transaction also means the snapshot never holds two locks, so it cannot deadlock a TimeTracker writer.
* The same transaction advances ``ttsync_snapshot_progress``: a run killed at any point resumes after the last
  record it enqueued, and never enqueues one twice. Running a finished snapshot again enqueues every record once
  more; the consumer updates what QBO already has, it creates nothing new.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog
from sqlalchemy import Connection, Engine, and_, func, insert, select, text, update

from producer.aggregate_snapshots import AGGREGATES, snapshot
from producer.outbox_tables import snapshot_progress
from producer.outbox_writer import next_version, write_event

log = structlog.get_logger("ttsync.snapshot")

# Parents before children: a payment's invoice and an invoice's customer reach the consumer first.
SNAPSHOT_ORDER: tuple[str, ...] = ("client", "invoice", "expense", "payment")


class SnapshotConflict(RuntimeError):
    """An unfinished run with other options exists: resume it with the same options, or pass ``restart``."""


@dataclass
class TypeProgress:
    aggregate_type: str
    total: int
    enqueued: int = 0
    last_id: int = 0
    finished: bool = False


@dataclass
class SnapshotReport:
    run_id: str
    resumed: bool
    dry_run: bool
    since: dt.datetime | None
    types: list[TypeProgress] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def enqueued(self) -> int:
        return sum(t.enqueued for t in self.types)

    @property
    def total(self) -> int:
        return sum(t.total for t in self.types)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        return self.enqueued / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        left = self.total - self.enqueued
        return None if self.rate <= 0 else left / self.rate

    def as_dict(self) -> dict[str, object]:
        return {
            "run_id": self.run_id, "resumed": self.resumed, "dry_run": self.dry_run,
            "since": self.since.isoformat() if self.since else None, "enqueued": self.enqueued, "total": self.total,
            "elapsed_s": round(self.elapsed_s, 3), "records_per_s": round(self.rate, 1),
            "types": [{"type": t.aggregate_type, "total": t.total, "enqueued": t.enqueued, "last_id": t.last_id,
                       "finished": t.finished} for t in self.types],
        }


def parse_types(value: str | Sequence[str] | None) -> list[str]:
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value or SNAPSHOT_ORDER)]
    names = [n for n in names if n]
    unknown = sorted(set(names) - set(SNAPSHOT_ORDER))
    if unknown:
        raise ValueError(f"unknown record type(s) {', '.join(unknown)}; choose from {', '.join(SNAPSHOT_ORDER)}")
    return [t for t in SNAPSHOT_ORDER if t in names]


def _changed_since(since: dt.datetime | None) -> str:
    return "" if since is None else ' AND COALESCE("updated_at", "created_at") >= :since'


def _ids_after(conn: Connection, aggregate_type: str, after: int, since: dt.datetime | None, limit: int) -> list[int]:
    table = AGGREGATES[aggregate_type].root.table
    sql = f'SELECT "id" FROM "{table}" WHERE "id" > :after{_changed_since(since)} ORDER BY "id" LIMIT :n'
    return [int(r[0]) for r in conn.execute(text(sql), {"after": after, "since": since, "n": limit})]


def _count_after(conn: Connection, aggregate_type: str, after: int, since: dt.datetime | None) -> int:
    table = AGGREGATES[aggregate_type].root.table
    sql = f'SELECT COUNT(*) FROM "{table}" WHERE "id" > :after{_changed_since(since)}'
    return int(conn.execute(text(sql), {"after": after, "since": since}).scalar_one())


def _open_run(conn: Connection) -> tuple[str, dict[str, dict[str, object]]] | None:
    rows = conn.execute(select(snapshot_progress).where(
        snapshot_progress.c.run_id.in_(select(snapshot_progress.c.run_id)
                                       .where(snapshot_progress.c.finished_at.is_(None))))).mappings().all()
    if not rows:
        return None
    run_id = str(rows[0]["run_id"])
    return run_id, {str(r["aggregatetype"]): dict(r) for r in rows if r["run_id"] == run_id}


def _same_since(a: dt.datetime | None, b: dt.datetime | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.replace(tzinfo=a.tzinfo or dt.UTC) == b.replace(tzinfo=b.tzinfo or dt.UTC)


def enqueue_snapshot(conn: Connection, aggregate_type: str, record_id: str | int, source: str
                     ) -> tuple[uuid.UUID, int] | None:
    """One record's current state as a ``<type>.snapshot`` event, in the caller's transaction: the version
    first (it waits for a racing writer), then the state. (event id, version), or None when the record is gone
    (its delete event went out live; the version gap this leaves is harmless)."""
    version = next_version(conn, aggregate_type, str(record_id))
    state = snapshot(conn, aggregate_type, record_id)
    if state is None:
        return None
    event_id = write_event(conn, aggregate_type=aggregate_type, aggregate_id=str(record_id), action="snapshot",
                           payload=state, source=source, version=version)
    return event_id, version


def _enqueue_one(conn: Connection, run_id: str, aggregate_type: str, record_id: int, source: str) -> bool:
    """One record and the run's progress, in the caller's transaction."""
    if conn.dialect.name == "postgresql":
        # The progress row commits with the event, so a crash loses at most this transaction: durable enough,
        # and it spares one WAL flush per record.
        conn.execute(text("SET LOCAL synchronous_commit = off"))
    wrote = enqueue_snapshot(conn, aggregate_type, record_id, source) is not None
    now = dt.datetime.now(dt.UTC)
    conn.execute(update(snapshot_progress)
                 .where(and_(snapshot_progress.c.run_id == run_id, snapshot_progress.c.aggregatetype == aggregate_type))
                 .values(last_id=record_id, updated_at=now,
                         enqueued=snapshot_progress.c.enqueued + (1 if wrote else 0)))
    return wrote


def run_snapshot(engine: Engine, *, types: Sequence[str] | None = None, since: dt.datetime | None = None,
                 source: str = "timetracker", chunk_size: int = 500, max_rate: float | None = None,
                 dry_run: bool = False, restart: bool = False,
                 on_progress: Callable[[SnapshotReport], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> SnapshotReport:
    """Enqueue a snapshot event per record (``max_rate`` records/s at most), resuming an unfinished run."""
    wanted = parse_types(types)
    with engine.begin() as conn:
        found = _open_run(conn)
        if found is not None and not dry_run:
            run_id, rows = found
            same = set(rows) == set(wanted) and all(_same_since(r["since"], since) for r in rows.values())  # type: ignore[arg-type]
            if not same and not restart:
                raise SnapshotConflict(
                    f"snapshot run {run_id} ({', '.join(sorted(rows))}) is unfinished: run it again with the same "
                    "--types and --since to resume it, or pass --restart to abandon it")
            if not same:
                conn.execute(update(snapshot_progress).where(snapshot_progress.c.run_id == run_id)
                             .values(finished_at=func.now()))
                log.warning("snapshot_abandoned", run_id=run_id)
                found = None
        if found is not None and not dry_run:
            run_id, rows = found
            resumed = True
        else:
            run_id, rows, resumed = uuid.uuid4().hex, {}, False
            if not dry_run:
                now = dt.datetime.now(dt.UTC)
                for t in wanted:
                    conn.execute(insert(snapshot_progress).values(run_id=run_id, aggregatetype=t, since=since,
                                                                  last_id=0, enqueued=0, started_at=now,
                                                                  updated_at=now))
                    rows[t] = {"last_id": 0, "enqueued": 0, "finished_at": None}
        report = SnapshotReport(run_id, resumed, dry_run, since)
        for t in wanted:
            row = rows.get(t, {"last_id": 0, "enqueued": 0, "finished_at": None})
            last_id, done = int(row["last_id"]), int(row["enqueued"])  # type: ignore[call-overload]
            left = 0 if row["finished_at"] is not None else _count_after(conn, t, last_id, since)
            report.types.append(TypeProgress(t, total=done + left, enqueued=done, last_id=last_id,
                                             finished=row["finished_at"] is not None))
    log.info("snapshot_started", **{k: v for k, v in report.as_dict().items() if k != "types"})
    if dry_run:
        return report
    enqueued_at_start = report.enqueued
    for progress in report.types:
        if progress.finished:
            continue
        while True:
            if should_stop is not None and should_stop():
                log.info("snapshot_stopped", run_id=run_id, enqueued=report.enqueued)
                return report
            with engine.connect() as conn:
                ids = _ids_after(conn, progress.aggregate_type, progress.last_id, since, chunk_size)
            if not ids:
                break
            with engine.connect() as conn:
                for record_id in ids:
                    with conn.begin():
                        if _enqueue_one(conn, run_id, progress.aggregate_type, record_id, source):
                            progress.enqueued += 1
                    progress.last_id = record_id
                    if max_rate:
                        # Pace against the run's own start: bursts are evened out, a slow stretch is not made up.
                        ahead = (report.enqueued - enqueued_at_start) / max_rate - report.elapsed_s
                        if ahead > 0:
                            time.sleep(ahead)
            progress.total = max(progress.total, progress.enqueued)
            if on_progress is not None:
                on_progress(report)
        with engine.begin() as conn:
            conn.execute(update(snapshot_progress)
                         .where(and_(snapshot_progress.c.run_id == run_id,
                                     snapshot_progress.c.aggregatetype == progress.aggregate_type))
                         .values(finished_at=dt.datetime.now(dt.UTC)))
        progress.finished = True
        progress.total = progress.enqueued
    log.info("snapshot_finished", **{k: v for k, v in report.as_dict().items() if k != "types"})
    return report
