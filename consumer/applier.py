"""Apply one event to QBO, exactly once in effect: ``prepare`` (consumer.prepare: decide, resolve, build) gives a
``Write`` or a final ``Outcome``; ``execute`` (consumer.execute) carries the write out and records it. The group
consumer calls ``apply`` per record, or ``prepare`` then ``execute_batch`` for a backlog."""

from __future__ import annotations

import structlog

from consumer.crash_points import CrashHook, no_crash
from consumer.execute import Executor
from consumer.lifecycle import SyncPolicy
from consumer.mapping import MappingOptions
from consumer.prepare import Preparer
from consumer.qbo_port import QboPort
from consumer.references import ReferenceResolver
from consumer.state_store import Recorded, StateStore
from consumer.writes import Outcome, Result, Write
from schemas.events import EventEnvelope

log = structlog.get_logger("ttsync.apply")


class EventApplier:
    def __init__(self, qbo: QboPort, store: StateStore, resolver: ReferenceResolver, policy: SyncPolicy,
                 options: MappingOptions, *, stale_retries: int = 3, adopt_legacy: bool = True,
                 crash: CrashHook = no_crash) -> None:
        self.qbo = qbo
        self.store = store
        self.resolver = resolver
        self.policy = policy
        self.options = options
        self.preparer = Preparer(qbo, store, resolver, policy, options, adopt_legacy=adopt_legacy)
        self.executor = Executor(qbo, store, options, stale_retries=stale_retries, crash=crash)

    def apply(self, event: EventEnvelope, generation: str = "", origin: str | None = None) -> Outcome:
        """``generation``: which delivery of the event this is (see mapping.request_id); "" for the first.
        ``origin``: who made the change (``Preparer.prepare``)."""
        prepared = self.prepare(event, generation, origin)
        return prepared if isinstance(prepared, Outcome) else self.execute(prepared)

    def prepare(self, event: EventEnvelope, generation: str = "", origin: str | None = None, *,
                skipped: list[Recorded] | None = None) -> Write | Outcome:
        """``skipped``: a skip's record goes there, for the caller to write with others (``record_skipped``)
        before it reads this aggregate again or commits the offset; without it, the skip is recorded at once."""
        prepared = self.preparer.prepare(event, generation, origin)
        if isinstance(prepared, Outcome) and prepared.result is Result.SKIPPED:
            log.info("event_skipped", event_id=str(event.event_id), event_type=event.event_type,
                     aggregate_id=event.aggregate_id, version=event.aggregate_version, reason=prepared.reason)
            if skipped is None:
                self.store.record(event, Result.SKIPPED.value)
            else:
                skipped.append(Recorded(event, Result.SKIPPED.value))
        return prepared

    def record_skipped(self, skipped: list[Recorded]) -> None:
        """The records ``prepare`` left in ``skipped``, in one transaction."""
        self.store.record_many(skipped)

    def note_dead_lettered(self, event: EventEnvelope, reason: str) -> None:
        """``event`` went to the dead-letter topic: later versions that depend on it follow it (consumer.prepare)."""
        self.store.note_dead_lettered(event, reason)

    def execute(self, write: Write) -> Outcome:
        outcome = self.executor.execute(write)
        event = write.event
        log.info("event_applied", event_id=str(event.event_id), event_type=event.event_type,
                 aggregate_id=event.aggregate_id, version=event.aggregate_version, result=outcome.result.value,
                 qbo_id=outcome.qbo_id)
        return outcome

    def execute_batch(self, writes: list[Write]) -> list[Outcome | None]:
        return self.executor.execute_batch(writes)

    def prefetch(self, events: list[EventEnvelope]) -> None:
        """A backlog's QBO customers read together before its events are prepared (``Preparer.prefetch``)."""
        self.preparer.prefetch(events)

    def forget_prefetched(self) -> None:
        self.preparer.forget_prefetched()
