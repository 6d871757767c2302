"""QBO's change data capture, polled: the source of truth behind the webhooks' hints, and the whole intake for a
deployment without a public endpoint. Every ``interval_s`` it asks ``/cdc`` what changed since its cursor, writes
one change record per entity to ``<prefix>.qbo.changes`` (the webhook's topic), and only once the broker has them
moves the cursor, kept in the state database. The next call starts a little before QBO's own time of this answer
(``OVERLAP``): a change is read twice rather than missed, and the importer applies it once (by SyncToken).

QBO's CDC looks back 30 days at most: after a longer outage the poller says so, asks from the oldest point it may,
and points to ``ttsync reconcile`` for what is older."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

import structlog
from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from consumer.qbo_port import QboPort
from consumer.state_db import begin, connect
from consumer.state_tables import import_cursor
from importer.notifications import IMPORTED_ENTITIES, changes_from_cdc
from importer.webhook import Publish

log = structlog.get_logger("ttsync.import.cdc")

CDC_LOOKBACK = dt.timedelta(days=30)  # QBO refuses an older changedSince (Fault 2010)
OVERLAP = dt.timedelta(minutes=2)


def _utc(text: str) -> dt.datetime | None:
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(dt.UTC) if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


class CdcPoller:
    def __init__(self, qbo: QboPort, state: Engine, realm_id: str, publish: Publish, topic: str, *,
                 entities: tuple[str, ...] = IMPORTED_ENTITIES,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.qbo = qbo
        self.state = state
        self.realm_id = realm_id
        self.publish = publish
        self.topic = topic
        self.entities = entities
        self.clock = clock
        self.stats = {"polls": 0, "changes": 0, "gaps": 0}
        self._woken = threading.Event()

    def wake(self) -> None:
        """Poll now rather than at the interval's end: a webhook said something changed (its delivery may have
        been one of several, or a hint that came before the change is visible)."""
        self._woken.set()

    def cursor(self) -> dt.datetime | None:
        with connect(self.state) as conn:
            value: dt.datetime | None = conn.execute(select(import_cursor.c.changed_since).where(
                import_cursor.c.realm_id == self.realm_id)).scalar()
        if value is None:
            return None
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)

    def poll_once(self) -> int:
        """One CDC call; returns the changes written. Raises (cursor unmoved) when QBO or the broker fails."""
        now = self.clock()
        since = self.cursor() or now - OVERLAP  # a first run starts now: older history is reconcile's
        oldest = now - CDC_LOOKBACK + dt.timedelta(hours=1)
        if since < oldest:
            self.stats["gaps"] += 1
            log.warning("cdc_gap_too_long", cursor=since.isoformat(), asked_from=oldest.isoformat(),
                        action="changes older than QBO's 30-day CDC window are not seen: run `ttsync reconcile`")
            since = oldest
        answer = self.qbo.cdc(list(self.entities), since.isoformat().replace("+00:00", "Z"))
        changes = changes_from_cdc(self.realm_id, answer)
        records = [c.record(self.topic) for c in changes]
        errors = [e for e in self.publish(records) if e is not None] if records else []
        if errors:
            raise errors[0]
        answered = _utc(str(answer.get("time") or "")) or now  # QBO's clock, not ours
        self._move_cursor(max(since, answered - OVERLAP), now)
        self.stats["polls"] += 1
        self.stats["changes"] += len(changes)
        if changes:
            log.info("cdc_changes", changes=len(changes), since=since.isoformat())
        return len(changes)

    def _move_cursor(self, changed_since: dt.datetime, polled_at: dt.datetime) -> None:
        with begin(self.state) as conn:
            insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            # In UTC: SQLite keeps no offset, and QBO answers in its company's time zone.
            stmt = insert(import_cursor).values(realm_id=self.realm_id, changed_since=changed_since.astimezone(dt.UTC),
                                                polled_at=polled_at.astimezone(dt.UTC))
            conn.execute(stmt.on_conflict_do_update(index_elements=[import_cursor.c.realm_id], set_={
                "changed_since": stmt.excluded.changed_since, "polled_at": stmt.excluded.polled_at}))

    def run(self, stop: threading.Event, interval_s: float) -> None:
        """Poll until ``stop`` (set it, then ``wake``); a failed poll is logged and tried again at the next
        interval (the cursor holds)."""
        while not stop.is_set():
            self._woken.clear()
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 - QBO or the broker away: the next interval tries again
                log.warning("cdc_poll_failed", error=f"{type(exc).__name__}: {str(exc)[:300]}",
                            retry_in_s=interval_s)
            self._woken.wait(interval_s)
