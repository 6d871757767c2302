"""``ttsync consume``: the Kafka consumer group that applies events to QBO.

Per polled record, in partition order: ``_settle`` it (apply, or follow the retry policy: back off in place,
forward to a retry topic, dead-letter), then commit. The offset is committed only once the record is applied,
proven a duplicate, forwarded or dead-lettered (the forward is acknowledged by the broker first). A record in a
retry topic that is not due yet pauses its partition and is read again when due, so it never blocks the main
topics. Kafka is behind ``consumer.kafka_port`` (kafka-python in production, ``tests.fakes.StubBroker`` in tests).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import structlog

from consumer import metrics
from consumer.applier import EventApplier
from consumer.crash_points import CrashHook, no_crash
from consumer.dead_letter import (
    Forwarder,
    attempt_count,
    base_topic,
    check_headers,
    due_at,
    failing_for_s,
    replay_count,
    retry_tier,
)
from consumer.errors import (
    ConsumerStuck,
    MalformedEvent,
    MemberStuck,
    PermanentError,
    RetryableError,
    StateUnavailable,
    StopRequested,
)
from consumer.execute import BATCH_LIMIT
from consumer.housekeeping import ProcessedEventsRetention
from consumer.kafka_port import BrokerUnavailable, ConsumerPort, Partition, PartitionsLost, PolledRecord
from consumer.outage import OutageBreaker, tied_to_record
from consumer.retry_policy import RetryPolicy, StepKind
from consumer.state_store import Recorded
from consumer.watchdog import FetchWatchdog, GroupWatchdog, RenewalBudget
from consumer.writes import Outcome, Result, Write
from schemas.backoff import Backoff
from schemas.codec import EventDecodeError, decode_event, headers_to_dict
from schemas.contract import Header, all_topics, dlq_topic, retry_topic
from schemas.events import EventEnvelope

log = structlog.get_logger("ttsync.consumer")


@dataclass
class ConsumerStats:
    applied: int = 0
    skipped: int = 0
    duplicates: int = 0
    retried_in_place: int = 0
    forwarded_to_retry: int = 0
    dead_lettered: int = 0
    outages: int = 0
    member_renewals: int = 0  # stuck members replaced in place (watchdog.RenewalBudget)
    by_result: dict[str, int] = field(default_factory=dict)
    last_progress_at: float = field(default_factory=time.monotonic)


# Records come back from a retry topic as they went in, one after the other, each due its delay after it went:
# one due within this many seconds joins the batch request of those due now. They waited 10 s or more for a
# dependency or an outage; coming back 2 s early changes nothing but the number of requests (a fifth of the
# delay at most, for short tiers).
BATCH_EARLY_S = 2.0


def delivery_generation(rec: PolledRecord, tier: int | None) -> str:
    """Names a delivery of an event for its QBO requestids: the retry tier it came from, how often it failed
    before, and how often an operator replayed it. A Fault QBO gave one delivery is not replayed to the next.
    The attempts count matters in the last tier, which a record waiting long passes through again and again: with
    the tier alone, QBO answered every later attempt with the first one's Fault (soak, seed 1203: payments refused
    once above their invoice's balance were refused for ever after the invoice's larger total landed)."""
    replays, attempts = replay_count(rec), attempt_count(rec)
    parts = (([f"t{tier}"] + ([f"a{attempts}"] if attempts else [])) if tier is not None else []) \
        + ([f"r{replays}"] if replays else [])
    return ".".join(parts)


def origin_of(rec: PolledRecord) -> str | None:
    """Who made the change (capture's ``ttsync.origin`` header), or None for TimeTracker's own users."""
    return headers_to_dict(rec.headers).get(Header.ORIGIN) or None


def with_retry_topics(main: list[str], delays: Iterable[int]) -> list[str]:
    """The topics a consumer group reads: its main topics, and a retry topic per delay for each."""
    delays = list(delays)
    return main + [retry_topic(t, d) for t in main for d in delays]


def consumer_topics(prefix: str, delays: Iterable[int]) -> list[str]:
    return with_retry_topics(all_topics(prefix), delays)


# Applies one record (check, decode, apply) and says what came of it; raises what the retry policy reads.
RecordHandler = Callable[[PolledRecord, int | None], Outcome]


class GroupConsumer:
    """The export consumer by default (TimeTracker events -> ``applier``); given ``handler`` and ``topics``, the
    same loop (retry topics, dead letters, outage pause, watchdogs) serves another stream, e.g. the importer's."""

    def __init__(self, *, port: ConsumerPort, group_id: str, topic_prefix: str, applier: EventApplier | None,
                 policy: RetryPolicy, batch_min_records: int = 10, unjoined_exit_s: float = 120.0,
                 breaker: OutageBreaker | None = None, crash: CrashHook = no_crash,
                 retention: ProcessedEventsRetention | None = None, handler: RecordHandler | None = None,
                 topics: list[str] | None = None, clock: Callable[[], float] = time.monotonic,
                 broker_answers: Callable[[], bool] | None = None) -> None:
        if applier is None and handler is None:
            raise ValueError("a consumer needs an applier or a record handler")
        self.port = port
        self.group_id = group_id
        self.prefix = topic_prefix
        self.applier = applier
        self.handler = handler
        self.policy = policy
        self.topics = with_retry_topics(topics or all_topics(topic_prefix), policy.topic_delays_s)
        self.stats = ConsumerStats()
        self.batch_min_records = batch_min_records
        self.breaker = breaker or OutageBreaker()
        self.crash = crash
        self.retention = retention
        self._stop = threading.Event()
        self._paused: dict[Partition, float] = {}  # retry partitions waiting for their records' due time
        self._run_over: Callable[[], bool] = lambda: False
        self.group_watchdog = GroupWatchdog(port, group_id, unjoined_exit_s, clock, broker_answers)
        self.fetch_watchdog = FetchWatchdog(port)
        self.renewals = RenewalBudget(clock)
        self.forwarder = Forwarder(port.send, group_id=group_id, dlq=dlq_topic(topic_prefix),
                                   retry_delays_s=policy.topic_delays_s, stopping=self._stop.wait)
        self.heartbeat = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.port.close()

    # -- the loop ------------------------------------------------------------------------------------

    def run(self, *, max_seconds: float | None = None, until: Callable[[ConsumerStats], bool] | None = None,
            on_progress: Callable[[ConsumerStats], None] | None = None) -> ConsumerStats:
        self.port.subscribe(self.topics)
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        # A record waiting in place (an outage, the state database) must not outlive the run it belongs to.
        self._run_over = lambda: (deadline is not None and time.monotonic() > deadline) or (
            until is not None and until(self.stats))
        log.info("consumer_started", group=self.group_id, topics=len(self.topics))
        poll_backoff = Backoff(base_s=0.5, max_s=10.0)
        try:
            while not self._stop.is_set() and not self._run_over():
                self.heartbeat = time.monotonic()  # /livez: the loop turns
                if self.retention is not None:
                    self.retention.maybe_purge()
                self._resume_due()
                try:
                    batch = self.port.poll(timeout_ms=250)
                except BrokerUnavailable as exc:
                    self._wait_for_broker(exc, poll_backoff, "poll")
                    continue
                if poll_backoff.attempt:  # the broker answers again
                    poll_backoff.reset()
                    metrics.BROKER_AWAY.set(0)
                try:
                    self.group_watchdog.check()
                    self.fetch_watchdog.after_poll(batch.keys(), set(self._paused))
                except MemberStuck as exc:
                    self._renew_member(exc)  # what this poll fetched is read again by the fresh member
                    continue
                polled = list(batch.items())
                for i, (tp, records) in enumerate(polled):
                    try:
                        self._process_partition(tp, records)
                    except StopRequested:  # fetched, never handled: read them again if this consumer runs on
                        self._rewind([(later_tp, later[0].offset) for later_tp, later in polled[i + 1:]])
                        raise
                    except PartitionsLost as exc:
                        # The group moved on (a rebalance): rejoin at the next poll. The client's position is past
                        # all of this poll: rewind what is still ours, or a member that keeps its partitions
                        # (cooperative rebalancing) would never apply the rest, nor commit over this partition's
                        # refused batch until a new record came (its lag stayed for good). Read again, the
                        # applied records are found done and committed.
                        log.warning("partitions_lost", topic=tp.topic, partition=tp.partition, error=str(exc))
                        self.fetch_watchdog.judge_soon()
                        self._rewind([(tp, records[0].offset)]
                                     + [(later_tp, later[0].offset) for later_tp, later in polled[i + 1:]])
                        break
                    if self._stop.is_set():
                        break
                if batch and on_progress is not None:
                    on_progress(self.stats)
        except StopRequested:
            log.info("consumer_stop_requested_mid_record")
        finally:
            log.info("consumer_stopped", **{k: v for k, v in self.stats.__dict__.items() if isinstance(v, int)})
        return self.stats

    def _renew_member(self, why: MemberStuck) -> None:
        """#21: a stuck member is replaced in place, not by exiting for a supervisor: the fresh member reads from
        the committed offsets, so what this one fetched and did not commit is read again (nothing lost, the
        applier dedupes). Spent ``RenewalBudget``: ``ConsumerStuck``, the process exits."""
        renewals = self.renewals.spend(why)
        log.warning("member_renewed", reason=str(why), renewals_in_window=renewals)
        self.stats.member_renewals += 1
        metrics.MEMBER_RENEWALS.inc()
        self._paused.clear()  # waiting retry records are uncommitted: the fresh member reads and pauses them again
        backoff = Backoff(base_s=0.5, max_s=10.0)
        while True:
            try:
                self.port.renew_membership()
                break
            except BrokerUnavailable as exc:  # one renewal spent: waiting for the broker is not another failure
                if not self._wait_for_broker(exc, backoff, "renew_membership"):
                    raise StopRequested("stopping while the broker is away: a fresh member reads from the committed "
                                        "offsets") from exc
        self.group_watchdog.reset()
        self.fetch_watchdog.reset()

    def _rewind(self, positions: list[tuple[Partition, int]]) -> None:
        """Point owned partitions back at records fetched but never handled. One that cannot be rewound ends
        the consumer (``ConsumerStuck``): a fresh member reads from the committed offsets, nothing is skipped."""
        owned = self.port.assignment()
        for tp, offset in positions:
            if tp not in owned:
                continue  # its next owner reads it from the committed offset
            try:
                self.port.seek(tp, offset)
            except Exception as exc:  # any client error here: exit rather than skip records
                raise ConsumerStuck(f"could not rewind {tp.topic}[{tp.partition}] to {offset} after the group "
                                    f"moved on ({type(exc).__name__}: {exc}): exiting for a fresh member") from exc

    def _resume_due(self) -> None:
        now = time.time()
        for tp, due in list(self._paused.items()):
            if due <= now:
                if tp in self.port.assignment():
                    self.port.resume(tp)
                del self._paused[tp]

    def _commit(self, tp: Partition, last_done: int) -> None:
        """The one place offsets are committed: every record of ``tp`` up to ``last_done`` is applied, a duplicate,
        skipped, forwarded or dead-lettered (a crash before this line redelivers them; the applier dedupes).

        A broker that is away is waited for here, in place: the consumer used to exit on the commit's timeout and
        leave its restart to a supervisor. ``PartitionsLost`` goes up to the loop, which polls again."""
        self.crash("before_offset_commit")
        backoff = Backoff(base_s=0.5, max_s=10.0)
        while True:
            try:
                self.port.commit(tp, last_done + 1)
                metrics.BROKER_AWAY.set(0)
                return
            except BrokerUnavailable as exc:
                if not self._wait_for_broker(exc, backoff, "commit", topic=tp.topic, partition=tp.partition):
                    raise StopRequested("stopping while the broker is away: the records are read again") from exc

    def _wait_for_broker(self, exc: BrokerUnavailable, backoff: Backoff, doing: str, **where: str | int) -> bool:
        """The broker is away (#21): wait one backoff step here, in place, rather than exit for a supervisor; the
        caller tries again. False, without waiting, when the consumer is stopping or its run is over."""
        if self._stop.is_set() or self._run_over():
            return False
        delay = backoff.next()
        metrics.BROKER_AWAY.set(1)
        log.warning("waiting_for_broker", doing=doing, error=str(exc), retry_in_s=round(delay, 2), **where)
        self.fetch_watchdog.judge_soon()  # soon after the broker's return: a rejoin may leave partitions unfetched
        self._stop.wait(delay)
        self.heartbeat = time.monotonic()  # alive, waiting: /livez stays green, the metric says why
        return True

    def _process_partition(self, tp: Partition, records: list[PolledRecord]) -> None:
        tier = retry_tier(tp.topic, self.policy.topic_delays_s)
        if self.applier is not None and self.batch_min_records:
            # A backlog (main topic, or what is due of a retry topic: the payments of a backfill that came before
            # their invoices return there together) goes in batch requests.
            due = records if tier is None else self._due_prefix(
                records, min(BATCH_EARLY_S, self.policy.topic_delays_s[tier] / 5))
            if len(due) >= self.batch_min_records:
                self._process_backlog(tp, due, tier)
                rest = records[len(due):]
                if rest and not self._stop.is_set() and not self._pause_until_due(tp, rest[0]):
                    self.port.seek(tp, rest[0].offset)  # due by now: read from it again
                return
        done: int | None = None
        rec = None
        try:
            for rec in records:
                if tier is not None and self._pause_until_due(tp, rec):
                    return
                self._settle(rec, tier)
                done = rec.offset
                if self._stop.is_set():
                    return
        except StopRequested:
            if rec is not None:  # read it again if this consumer runs on: it was neither applied nor forwarded
                self.port.seek(tp, rec.offset)
            raise
        finally:
            if done is not None:
                self._commit(tp, done)

    @staticmethod
    def _due_prefix(records: list[PolledRecord], early_s: float) -> list[PolledRecord]:
        """The records of a retry partition up to the first one not due within ``early_s``."""
        now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=early_s)
        for i, rec in enumerate(records):
            due = due_at(rec)
            if due is not None and due > now:
                return records[:i]
        return records

    def _pause_until_due(self, tp: Partition, rec: PolledRecord) -> bool:
        """A retry record not due yet stops the reading of its partition until it is (True); else False."""
        due = due_at(rec)
        if due is None or due <= dt.datetime.now(dt.UTC):
            return False
        self.port.pause(tp)
        self.port.seek(tp, rec.offset)
        self._paused[tp] = due.timestamp()
        return True

    def _process_backlog(self, tp: Partition, records: list[PolledRecord], tier: int | None = None) -> None:
        """A backlog: plain creates and updates of distinct aggregates go to QBO 30 at a time in one batch
        request (one request of the realm's budget instead of 30). QBO allows 40 batch requests a minute within
        its 500: while none is free, the oldest pending write goes alone on the rest of the budget, and the batch
        stays full for the next free one (40 x 30 + 460 writes a minute at most, not 40 x 30). Order per
        aggregate holds: a second event of an aggregate already pending sends what is pending first. Anything
        unusual takes the one-by-one path.

        Skipped events (older versions, drafts that stay local: most of a busy stream) are recorded together, in
        one transaction, before their aggregate is read again, before anything goes the one-by-one path, and
        before the offset is committed."""
        assert self.applier is not None
        applier = self.applier
        pending: list[tuple[PolledRecord, Write]] = []
        skipped: list[Recorded] = []
        done: int | None = None

        def record_skipped() -> None:
            # Called outside the single path's handling (before it, and before the commit): the state database
            # going away here (kill -9 of PostgreSQL) ended the consumer. Wait for it in place, as the single
            # path does (the policy's delay, the same wait); stopping leaves them unrecorded and the offset
            # uncommitted, to be read again.
            attempt = 0
            while skipped:
                try:
                    applier.record_skipped(skipped)
                    skipped.clear()
                except StateUnavailable as exc:
                    attempt += 1
                    step = self.policy.next_step(exc, attempt, tier)
                    log.warning("state_database_wait", skipped=len(skipped), seconds=round(step.delay_s, 2),
                                error=str(exc)[:200])
                    self._wait_in_place(step.delay_s, exc)

        def send_batch() -> None:
            try:
                outcomes: list[Outcome | None] = applier.execute_batch([w for _, w in pending])
            except Exception as exc:  # noqa: BLE001 - the single path retries, recovers or dead-letters each
                log.warning("batch_failed", size=len(pending), error=repr(exc)[:300])
                outcomes = [None] * len(pending)
            for (rec, _), outcome in zip(pending, outcomes, strict=True):
                if outcome is None:
                    record_skipped()
                    self._settle(rec, tier)
                else:
                    self._count(base_topic(rec.topic), outcome)
            pending.clear()

        def send_oldest_alone() -> None:
            rec, write = pending.pop(0)
            try:
                self._count(base_topic(rec.topic), applier.execute(write))
            except Exception:  # noqa: BLE001 - the single path retries, recovers or dead-letters it
                record_skipped()
                self._settle(rec, tier)

        def batch_free() -> bool:
            try:
                return applier.qbo.reserve_batch()
            except StateUnavailable:
                # The realm's shared budget lives in the state database, which is away (kill -9 of PostgreSQL):
                # no batch then. The writes go one by one, where each waits for the database in place; this
                # used to end the consumer.
                return False

        def flush(*, everything: bool = True) -> None:
            """Send what is pending as one batch request if one is free; else the oldest write alone, and on
            (``everything``) until a batch request is free or nothing is left."""
            while pending:
                if batch_free():
                    send_batch()
                    return
                send_oldest_alone()
                if not everything:
                    return

        events = self._prefetch(records)
        try:
            for rec, decoded in zip(records, events, strict=True):
                try:
                    event = decoded or decode_event(rec.value or b"")  # undecodable: raises for the single path
                    key = (event.aggregate_type, event.aggregate_id)
                    if any((s.event.aggregate_type, s.event.aggregate_id) == key for s in skipped):
                        record_skipped()
                    if any((w.event.aggregate_type, w.event.aggregate_id) == key for _, w in pending):
                        flush()
                    elif len(pending) >= BATCH_LIMIT:
                        flush(everything=False)
                    prepared = applier.prepare(event, delivery_generation(rec, tier), origin_of(rec),
                                               skipped=skipped)
                    if isinstance(prepared, Write) and prepared.batchable:
                        pending.append((rec, prepared))
                    else:  # a final outcome, or a write that goes alone (a void, a delete, a settlement)
                        outcome = prepared if isinstance(prepared, Outcome) else applier.execute(prepared)
                        self._count(base_topic(rec.topic), outcome)
                except Exception:  # noqa: BLE001 - decode errors and the like: the single path handles them
                    flush()
                    record_skipped()
                    self._settle(rec, tier)
                if self._stop.is_set():
                    break
                done = rec.offset
            flush()
        finally:
            applier.forget_prefetched()
            if done is not None and not pending:
                # Recorded first: an offset committed over a skip never recorded would leave its aggregate a
                # version behind, and the next version would wait for it in the retry topics.
                record_skipped()
                self._commit(tp, done)

    def _prefetch(self, records: list[PolledRecord]) -> list[EventEnvelope | None]:
        """A backlog's events, decoded (None: undecodable, for the single path to dead-letter), after the QBO
        entities they will look for by name are read together (``EventApplier.prefetch``). That read only saves
        requests: when QBO or the state database fails it, each event looks for its own as before."""
        assert self.applier is not None
        events: list[EventEnvelope | None] = []
        for rec in records:
            try:
                events.append(decode_event(rec.value or b""))
            except EventDecodeError:  # decoded again where it is handled, and dead-lettered with the reason
                events.append(None)
        try:
            self.applier.prefetch([e for e in events if e is not None])
        except (RetryableError, PermanentError) as exc:
            log.warning("prefetch_failed", records=len(records), error=str(exc)[:300])
        return events

    # -- one record ----------------------------------------------------------------------------------

    def _settle(self, rec: PolledRecord, tier: int | None) -> None:
        """Settle one record, so that its offset may be committed:

        1. apply it (a duplicate or a skip is settled too);
        2. on failure, ask the retry policy (consumer.retry_policy) what to do;
        3. wait and go back to 1 (in place), or forward it to a retry topic, or dead-letter it
           (consumer.dead_letter); a fatal error stops the consumer with the record unsettled."""
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                outcome = self._apply(rec, tier)  # 1.
            except Exception as exc:
                attempt += 1
                self._outage_check(exc, rec)
                step = self.policy.next_step(exc, attempt, tier, failing_for_s=failing_for_s(rec),  # 2.
                                             outage=self.breaker.is_open)
                log.warning("event_failed", topic=rec.topic, partition=rec.partition, offset=rec.offset,
                            error=type(exc).__name__, message=str(exc)[:500], attempt=attempt, step=step.kind.value,
                            tied_to_record=tied_to_record(exc))
                if step.kind is StepKind.STOP:  # 3.
                    self._stop.set()
                    raise
                if step.kind is StepKind.RETRY_IN_PLACE:
                    self._wait_in_place(step.delay_s, exc)
                    continue
                if step.kind is StepKind.RETRY_TOPIC:
                    self.forwarder.to_retry_topic(rec, exc, attempts=attempt, tier=step.tier, delay_s=step.delay_s)
                    self.stats.forwarded_to_retry += 1
                else:
                    self.forwarder.to_dead_letter(rec, exc, attempts=attempt, reason=step.reason)
                    self.stats.dead_lettered += 1
                    self._note_dead_lettered(rec, step.reason or str(exc))
                return
            metrics.APPLY_SECONDS.observe(time.monotonic() - started)
            self._count(base_topic(rec.topic), outcome)
            return

    def _note_dead_lettered(self, rec: PolledRecord, reason: str) -> None:
        """Remember which version went to the dead-letter topic, so that a later one depending on it follows it
        there at once (consumer.prepare). Without the note that one only waits in the retry topics until the
        dependency wait runs out: a state database that does not answer now is logged, not waited for."""
        if self.applier is None:
            return
        try:
            event = decode_event(rec.value or b"")
        except EventDecodeError:
            return  # not an event of any aggregate: nothing can depend on it
        try:
            self.applier.note_dead_lettered(event, reason)
        except StateUnavailable as exc:
            log.warning("dead_letter_not_noted", topic=rec.topic, partition=rec.partition, offset=rec.offset,
                        error=str(exc)[:300])

    def _apply(self, rec: PolledRecord, tier: int | None) -> Outcome:
        check_headers(rec)
        if self.handler is not None:
            return self.handler(rec, tier)
        assert self.applier is not None
        try:
            event = decode_event(rec.value or b"")
        except EventDecodeError as exc:
            raise MalformedEvent(str(exc), code=exc.code) from exc
        return self.applier.apply(event, delivery_generation(rec, tier), origin_of(rec))

    def _wait_in_place(self, delay_s: float, error: Exception) -> None:
        self.stats.retried_in_place += 1
        metrics.RETRIES.labels("in_place").inc()
        if delay_s and getattr(error, "retry_after_s", None):
            metrics.THROTTLE_WAIT.inc(delay_s)
        self.heartbeat = time.monotonic()  # waiting in place is the loop turning, not hanging
        if self._stop.wait(delay_s) or self._run_over():
            raise StopRequested("stopping: the record stays uncommitted and is read again") from error

    def _count(self, topic: str, outcome: Outcome) -> None:
        self._outage_over()
        metrics.EVENTS.labels(topic, outcome.result.value).inc()
        self.stats.by_result[outcome.result.value] = self.stats.by_result.get(outcome.result.value, 0) + 1
        if outcome.result is Result.DUPLICATE:
            self.stats.duplicates += 1
        elif outcome.result is Result.SKIPPED:
            self.stats.skipped += 1
        else:
            self.stats.applied += 1
        self.stats.last_progress_at = time.monotonic()

    def _outage_check(self, exc: BaseException, rec: PolledRecord) -> None:
        """Feed the breaker; log once when it opens; stop (for a supervisor) when the outage outlasts it."""
        now = time.monotonic()
        if self.breaker.failure(exc, (rec.topic, rec.partition, rec.offset), now):
            self.stats.outages += 1
            metrics.OUTAGE.set(1)
            log.error("consumer_paused_outage", cause=self.breaker.cause, records=self.breaker.threshold,
                      message=str(exc)[:300], stops_after_s=self.breaker.max_open_s)
        if self.breaker.outlasted(now):
            raise ConsumerStuck(f"{self.breaker.threshold}+ records in a row failed with {self.breaker.cause} for "
                                f"{self.breaker.open_for_s(now):.0f}s ({str(exc)[:200]}): the service, not the "
                                "records, is failing; exiting for a supervisor to restart the consumer (nothing "
                                "was dead-lettered, the records are read again)")

    def _outage_over(self) -> None:
        if self.breaker.is_open:
            log.info("consumer_resumed_after_outage", cause=self.breaker.cause)
            metrics.OUTAGE.set(0)
        self.breaker.success()
