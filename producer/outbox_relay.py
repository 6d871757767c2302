"""``ttsync relay``: publish outbox rows to Kafka, keyed by aggregate, then mark them published.

Guarantees and how:
- Nothing lost: rows are marked published in the claiming transaction, only after the broker acknowledged
  them; a crash before the commit leaves them unpublished and they are sent again (same event id, so
  consumers dedupe).
- Order per aggregate with several relays: the aggregates are split into hash buckets; a relay claims rows
  only of buckets whose transaction-level advisory lock it holds, in ``seq`` order, with
  ``FOR UPDATE SKIP LOCKED``. A row waiting after a failure holds back the later rows of its aggregate.
  Rows are never read by "id > last seen" (rows commit out of id order).
- Wakes on LISTEN/NOTIFY (sent by the capture at commit) with a fallback poll interval.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, bindparam, text
from sqlalchemy.engine import make_url

from producer.kafka_publisher import OutRecord, RecordPublisher
from producer.trigger_capture import NOTIFY_CHANNEL
from schemas.contract import SCHEMA_VERSION, Header, topic_for

log = structlog.get_logger("ttsync.relay")

ADVISORY_LOCK_CLASS = 0x74747379  # "ttsy": the first key of the relay's advisory locks

_PG_CLAIM = text(
    """
WITH held AS (
  SELECT b FROM unnest(CAST(:buckets AS int[])) AS b WHERE pg_try_advisory_xact_lock(:lock_class, b)
)
SELECT o.id, o.aggregatetype, o.aggregateid, o.type, o.payload::text AS payload, o.aggregate_version,
       o.headers::text AS headers, o.attempts
  FROM ttsync_outbox o
 WHERE o.published_at IS NULL
   AND (o.available_at IS NULL OR o.available_at <= now())
   AND ((hashtext(o.aggregateid)::bigint + 2147483648) % :n) IN (SELECT b FROM held)
   AND NOT EXISTS (
         SELECT 1 FROM ttsync_outbox p
          WHERE p.published_at IS NULL AND p.aggregatetype = o.aggregatetype
            AND p.aggregateid = o.aggregateid AND p.seq < o.seq AND p.available_at > now())
 ORDER BY o.seq
 LIMIT :batch
   FOR UPDATE OF o SKIP LOCKED
"""
)

_SQLITE_CLAIM = text(
    """
SELECT o.id, o.aggregatetype, o.aggregateid, o.type, CAST(o.payload AS TEXT) AS payload,
       o.aggregate_version, CAST(o.headers AS TEXT) AS headers, o.attempts
  FROM ttsync_outbox o
 WHERE o.published_at IS NULL
   AND (o.available_at IS NULL OR o.available_at <= :now)
   AND NOT EXISTS (
         SELECT 1 FROM ttsync_outbox p
          WHERE p.published_at IS NULL AND p.aggregatetype = o.aggregatetype
            AND p.aggregateid = o.aggregateid AND p.seq < o.seq AND p.available_at > :now)
 ORDER BY o.seq
 LIMIT :batch
"""
)

_MARK_PUBLISHED = text(
    "UPDATE ttsync_outbox SET published_at = :now, attempts = attempts + 1, last_error = NULL, "
    "available_at = NULL WHERE id IN :ids"
).bindparams(bindparam("ids", expanding=True))

_MARK_FAILED = text(
    "UPDATE ttsync_outbox SET attempts = attempts + 1, last_error = :error, available_at = :retry_at "
    "WHERE id = :id"
)


@dataclass
class RelayStats:
    published: int = 0
    failed: int = 0
    batches: int = 0
    purged: int = 0
    last_batch_at: float | None = None
    last_error: str | None = None
    by_topic: dict[str, int] = field(default_factory=dict)


def _retry_delay(attempts: int) -> float:
    return min(2.0 ** max(attempts, 0), 300.0)


class OutboxRelay:
    def __init__(
        self,
        engine: Engine,
        publisher: RecordPublisher,
        *,
        topic_prefix: str = "timetracker",
        batch_size: int = 500,
        poll_interval_s: float = 1.0,
        buckets: int = 16,
        retention: dt.timedelta = dt.timedelta(hours=72),
        purge_every_s: float = 60.0,
        on_batch: Callable[[RelayStats], None] | None = None,
    ) -> None:
        self.engine = engine
        self.publisher = publisher
        self.topic_prefix = topic_prefix
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.buckets = buckets
        self.retention = retention
        self.purge_every_s = purge_every_s
        self.on_batch = on_batch
        self.stats = RelayStats()
        self.is_postgres = engine.dialect.name == "postgresql"
        self._stop = threading.Event()
        self._listener: Any = None
        self._last_purge = 0.0

    # -- one batch ----------------------------------------------------------------------------------

    def _claim(self, conn: Connection) -> list[Any]:
        if self.is_postgres:
            order = list(range(self.buckets))
            random.shuffle(order)  # so that two relays do not both start with bucket 0
            return list(
                conn.execute(
                    _PG_CLAIM,
                    {"buckets": order, "lock_class": ADVISORY_LOCK_CLASS, "n": self.buckets,
                     "batch": self.batch_size},
                )
            )
        return list(conn.execute(_SQLITE_CLAIM, {"now": _utcnow(), "batch": self.batch_size}))

    def _record(self, row: Any) -> OutRecord:
        headers = [
            # SQLite hands back the uuid as 32 hex digits: normalise to the canonical form.
            (Header.EVENT_ID, str(uuid.UUID(str(row.id))).encode()),
            (Header.EVENT_TYPE, row.type.encode()),
            (Header.AGGREGATE_VERSION, str(row.aggregate_version).encode()),
            (Header.SCHEMA_VERSION, SCHEMA_VERSION.encode()),
        ]
        if row.headers:
            extra = json.loads(row.headers)
            if isinstance(extra, dict):
                headers += [(f"ttsync.{k}", str(v).encode()) for k, v in extra.items() if v is not None]
        return OutRecord(
            topic=topic_for(row.aggregatetype, self.topic_prefix),
            key=row.aggregateid.encode(),
            value=row.payload.encode(),
            headers=headers,
        )

    def run_once(self) -> int:
        """Claim, publish and mark one batch; returns the number of rows published."""
        with self.engine.begin() as conn:
            rows = self._claim(conn)
            if not rows:
                return 0
            results = self.publisher.publish([self._record(r) for r in rows])
            now = _utcnow()
            ok = [r.id for r, err in zip(rows, results, strict=True) if err is None]
            if ok:
                conn.execute(_MARK_PUBLISHED, {"now": now, "ids": ok})
            failed = [(r, err) for r, err in zip(rows, results, strict=True) if err is not None]
            for row, err in failed:
                conn.execute(
                    _MARK_FAILED,
                    {"id": row.id, "error": f"{type(err).__name__}: {err}"[:2000],
                     "retry_at": now + dt.timedelta(seconds=_retry_delay(row.attempts))},
                )
        self.stats.batches += 1
        self.stats.published += len(ok)
        self.stats.failed += len(failed)
        self.stats.last_batch_at = time.time()
        for r in rows:
            topic = topic_for(r.aggregatetype, self.topic_prefix)
            self.stats.by_topic[topic] = self.stats.by_topic.get(topic, 0) + 1
        if failed:
            self.stats.last_error = repr(failed[0][1])
            log.warning("publish_failed", failed=len(failed), published=len(ok), error=self.stats.last_error)
        else:
            log.debug("batch_published", published=len(ok))
        if self.on_batch:
            self.on_batch(self.stats)
        if failed and not ok:
            raise PublishFailed(self.stats.last_error or "publish failed")
        return len(ok)

    # -- housekeeping -------------------------------------------------------------------------------

    def purge(self) -> int:
        """Delete published rows older than the retention period, in chunks."""
        cutoff = _utcnow() - self.retention
        total = 0
        while True:
            with self.engine.begin() as conn:
                deleted = conn.execute(
                    text(
                        "DELETE FROM ttsync_outbox WHERE id IN (SELECT id FROM ttsync_outbox "
                        "WHERE published_at IS NOT NULL AND published_at < :cutoff LIMIT 5000)"
                    ),
                    {"cutoff": cutoff},
                ).rowcount
            total += deleted
            if deleted < 5000:
                break
        if total:
            log.info("outbox_purged", rows=total, older_than=str(self.retention))
        self.stats.purged += total
        return total

    # -- the loop -----------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, max_seconds: float | None = None, idle_exit: bool = False) -> RelayStats:
        """Relay until ``stop()`` (SIGTERM): the batch in flight always finishes first."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        backoff = 0.5
        log.info("relay_started", buckets=self.buckets, batch_size=self.batch_size,
                 dialect=self.engine.dialect.name)
        try:
            while not self._stop.is_set():
                if deadline is not None and time.monotonic() > deadline:
                    break
                try:
                    n = self.run_once()
                    backoff = 0.5
                except PublishFailed as exc:
                    log.warning("relay_backoff", seconds=backoff, error=str(exc))
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the relay
                    log.error("relay_batch_error", error=repr(exc), backoff_s=backoff)
                    self._close_listener()
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if time.monotonic() - self._last_purge > self.purge_every_s:
                    self._last_purge = time.monotonic()
                    try:
                        self.purge()
                    except Exception as exc:  # noqa: BLE001 - purge is housekeeping; retried next period
                        log.warning("purge_failed", error=repr(exc))
                if n > 0:
                    continue  # more may be waiting
                if idle_exit:
                    break
                self._wait_for_work()
        finally:
            self._close_listener()
            log.info("relay_stopped", published=self.stats.published, failed=self.stats.failed)
        return self.stats

    def _wait_for_work(self) -> None:
        if not self.is_postgres:
            self._stop.wait(self.poll_interval_s)
            return
        try:
            listener = self._ensure_listener()
            for _ in listener.notifies(timeout=self.poll_interval_s, stop_after=1):
                break
        except Exception as exc:  # noqa: BLE001 - NOTIFY is an optimisation; fall back to polling
            log.warning("listen_failed", error=repr(exc))
            self._close_listener()
            self._stop.wait(self.poll_interval_s)

    def _ensure_listener(self) -> Any:
        if self._listener is None or self._listener.closed:
            import psycopg

            url = make_url(self.engine.url).set(drivername="postgresql")
            self._listener = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
            self._listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return self._listener

    def _close_listener(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            finally:
                self._listener = None


class PublishFailed(RuntimeError):
    """No record of a batch reached the broker: the relay backs off and tries again."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
