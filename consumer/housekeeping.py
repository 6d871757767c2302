"""Keep the consumer's state bounded: processed events older than their retention are deleted, at most once an
interval, from the consumer loop. Which retention is safe (longer than Kafka may deliver an event again) is the
settings' to check (``TTSYNC_PROCESSED_EVENTS_RETENTION_DAYS``); the entity map, which holds each aggregate's
last version, is never purged, so an event redelivered after its id was forgotten is still skipped as not newer."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import structlog

from consumer.errors import StateUnavailable
from consumer.state_store import StateStore

log = structlog.get_logger("ttsync.consumer")


class ProcessedEventsRetention:
    def __init__(self, store: StateStore, keep: dt.timedelta | None, *, every_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.keep = keep
        self.every_s = every_s
        self.clock = clock
        self._next_at = clock()  # the first turn of the loop purges

    def maybe_purge(self) -> int:
        """Purge when the interval is up; returns the rows deleted. A database that does not answer is tried
        again at the next interval: the loop's own work reports the outage."""
        if self.keep is None or self.clock() < self._next_at:
            return 0
        self._next_at = self.clock() + self.every_s
        try:
            deleted = self.store.purge_processed(self.keep)
        except StateUnavailable as exc:
            log.warning("processed_events_purge_failed", error=str(exc)[:300], retry_in_s=self.every_s)
            return 0
        if deleted:
            log.info("processed_events_purged", rows=deleted, older_than_days=self.keep.total_seconds() / 86400)
        return deleted
