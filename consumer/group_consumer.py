"""``ttsync consume``: the Kafka consumer group that applies events to QBO.

Per polled record, in partition order: decode, apply (applier.py), and on failure follow the retry policy:
back off in place, forward to a retry topic, or dead-letter. The offset is committed only once the record is
applied, proven a duplicate, forwarded or dead-lettered (the forward is acknowledged by the broker first). A
record in a retry topic that is not due yet pauses its partition and is read again when due, so it never
blocks the main topics.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from sqlalchemy import exc as sa_exc

from consumer import metrics
from consumer.applier import EventApplier
from consumer.crash_points import CrashHook, no_crash
from consumer.dead_letter import base_topic, check_headers, due_at, failing_for_s, forward, replay_count, retry_tier
from consumer.errors import ConsumerStuck, MalformedEvent, StateUnavailable, StopRequested
from consumer.execute import BATCH_LIMIT
from consumer.outage import OutageBreaker, tied_to_record
from consumer.retry_policy import RetryPolicy, StepKind
from consumer.writes import Outcome, Write
from schemas.codec import EventDecodeError, decode_event
from schemas.contract import all_topics, dlq_topic, retry_topic
from schemas.kafka_client import KafkaConnection, as_connection

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
    by_result: dict[str, int] = field(default_factory=dict)
    last_progress_at: float = field(default_factory=time.monotonic)


def as_sync_error(exc: Exception) -> Exception:
    """A lost database connection is transient, not a reason to dead-letter the event."""
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError)) or (
            isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated):
        wrapped = StateUnavailable(f"state database unavailable: {type(exc).__name__}: {str(exc)[:300]}")
        wrapped.__cause__ = exc
        return wrapped
    return exc


IDLE_REFETCH_S = 15.0


def release_parked_records(consumer: KafkaConsumer) -> None:
    """Work around kafka-python 3.0.12: records it parks for a paused partition are handed back after a resume
    only while its in-line slot is None, but a fully read batch stays in that slot as an empty, non-None
    object. The resumed partition then is never fetched again (its parked batch also bars new fetches). Seen as
    retry-topic partitions stuck after their due time; tests/integration/test_consumer.py reproduces it. An
    empty in-line batch holds nothing: clearing the slot loses nothing."""
    fetcher = getattr(consumer, "_fetcher", None)
    inline = getattr(fetcher, "_next_partition_records", None)
    if inline is not None and not inline:
        fetcher._next_partition_records = None  # type: ignore[union-attr]


def delivery_generation(rec: Any, tier: int | None) -> str:
    """Names a delivery of an event for its QBO requestids: the retry tier it came from and how often an
    operator replayed it. A Fault QBO gave one delivery is not replayed to the next."""
    replays = replay_count(rec)
    parts = ([f"t{tier}"] if tier is not None else []) + ([f"r{replays}"] if replays else [])
    return ".".join(parts)


def consumer_topics(prefix: str, delays: Iterable[int]) -> list[str]:
    main = all_topics(prefix)
    return main + [retry_topic(t, d) for t in main for d in delays]


class GroupConsumer:
    def __init__(self, *, bootstrap_servers: KafkaConnection | str, group_id: str, topic_prefix: str,
                 applier: EventApplier, policy: RetryPolicy, max_poll_records: int = 100,
                 client_id: str = "ttsync-consumer", session_timeout_ms: int = 10_000, batch_min_records: int = 10,
                 unjoined_exit_s: float = 120.0, breaker: OutageBreaker | None = None,
                 crash: CrashHook = no_crash) -> None:
        self.group_id = group_id
        self.prefix = topic_prefix
        self.applier = applier
        self.policy = policy
        self.topics = consumer_topics(topic_prefix, policy.topic_delays_s)
        self.dlq = dlq_topic(topic_prefix)
        self.stats = ConsumerStats()
        self.batch_min_records = batch_min_records
        self._stop = threading.Event()
        connection = as_connection(bootstrap_servers)
        self.consumer = KafkaConsumer(
            **connection.client_config(), group_id=group_id, client_id=client_id,
            enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=max_poll_records,
            session_timeout_ms=session_timeout_ms, heartbeat_interval_ms=max(1000, session_timeout_ms // 4),
            # One event can wait a 429's Retry-After in place: allow it between polls.
            max_poll_interval_ms=900_000, metadata_max_age_ms=30_000,
        )
        self.producer = KafkaProducer(**connection.client_config(), acks="all", enable_idempotence=True,
                                      client_id=f"{client_id}-forward", max_request_size=8 * 1024 * 1024)
        self._paused: dict[TopicPartition, float] = {}
        self.unjoined_exit_s = unjoined_exit_s
        self._unjoined_since: float | None = None
        self._last_records_at = time.monotonic()
        self._stuck: dict[TopicPartition, int] = {}
        self.breaker = breaker or OutageBreaker()
        self._run_over: Callable[[], bool] = lambda: False
        self._clock: Callable[[], float] = time.monotonic  # tests inject their own
        self.heartbeat = time.monotonic()
        self.crash = crash

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.producer.close(timeout=10)

    # -- the loop ------------------------------------------------------------------------------------

    def run(self, *, max_seconds: float | None = None, until: Callable[[ConsumerStats], bool] | None = None,
            on_progress: Callable[[ConsumerStats], None] | None = None) -> ConsumerStats:
        try:
            # Metadata of every topic before the first join: a group leader without it assigns nothing ("No
            # partition metadata for topic ...") and the member waits for a metadata refresh (up to
            # metadata_max_age_ms) and another rebalance before it reads anything.
            self.consumer.partitions_for_topic(self.topics[0])
        except KafkaError as exc:  # the broker is away: subscribing waits for it anyway
            log.info("metadata_prefetch_failed", error=f"{type(exc).__name__}: {exc}")
        self.consumer.subscribe(self.topics)
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        # A record waiting in place (an outage, the state database) must not outlive the run it belongs to.
        self._run_over = lambda: (deadline is not None and time.monotonic() > deadline) or (
            until is not None and until(self.stats))
        log.info("consumer_started", group=self.group_id, topics=len(self.topics))
        try:
            while not self._stop.is_set():
                if deadline is not None and time.monotonic() > deadline:
                    break
                if until is not None and until(self.stats):
                    break
                self.heartbeat = time.monotonic()  # /livez: the loop turns
                self._resume_due()
                release_parked_records(self.consumer)
                batch = self.consumer.poll(timeout_ms=250)
                self._check_joined()
                self._refetch_when_idle(bool(batch))
                polled = list(batch.items())
                for i, (tp, records) in enumerate(polled):
                    try:
                        self._process_partition(tp, records)
                    except StopRequested:
                        for later_tp, later in polled[i + 1:]:  # fetched, never handled: read them again
                            self.consumer.seek(later_tp, later[0].offset)
                        raise
                    if self._stop.is_set():
                        break
                if batch and on_progress is not None:
                    on_progress(self.stats)
        except StopRequested:
            log.info("consumer_stop_requested_mid_record")
        finally:
            log.info("consumer_stopped", **{k: v for k, v in self.stats.__dict__.items() if isinstance(v, int)})
        return self.stats

    def _refetch_when_idle(self, got_records: bool) -> None:
        """A watchdog for partitions that hold records but are not fetched.

        The one cause found (``release_parked_records``) is worked around; this is the net under it, for any
        other way a client library can stop fetching a partition. After a quiet spell the consumer asks the
        broker for the log-end offsets of what it owns; a partition behind its end that is not deliberately
        paused is re-pointed at its own position (resets its fetch state).
        If the same partitions are still behind and unmoved at the next quiet check, the consumer exits for its
        supervisor to restart it: a fresh member reads from the committed offsets, nothing is lost."""
        now = time.monotonic()
        if got_records:
            self._last_records_at = now
            self._stuck = {}
            return
        if now - self._last_records_at < IDLE_REFETCH_S:
            return
        self._last_records_at = now
        waiting = [tp for tp in self.consumer.assignment() if tp not in self._paused]
        if not waiting:
            return
        try:
            ends = self.consumer.end_offsets(waiting)
            positions = {tp: self.consumer.position(tp) for tp in waiting}
        except KafkaError as exc:  # broker away: nothing to judge now, the next quiet check tries again
            log.info("partitions_check_skipped", error=f"{type(exc).__name__}: {exc}")
            return
        behind = {tp: positions[tp] for tp in waiting if ends.get(tp) is not None and ends[tp] > positions[tp]}
        if not behind:
            self._stuck = {}
            return
        again = [tp for tp, pos in behind.items() if self._stuck.get(tp) == pos]
        log.warning("partitions_not_fetched", action="exit" if again else "refetch",
                    partitions={f"{tp.topic}[{tp.partition}]": {"position": pos, "end": ends[tp],
                                                                  "fetch_state": self._fetch_state(tp)}
                                for tp, pos in behind.items()})
        if again:
            raise ConsumerStuck(f"{len(again)} partition(s) hold records but were not fetched after a refetch "
                                f"(e.g. {again[0].topic}[{again[0].partition}]): exiting for a supervisor to "
                                "restart the consumer")
        self._stuck = dict(behind)
        paused = self.consumer.paused()
        for tp, pos in behind.items():
            if tp in paused:
                self.consumer.resume(tp)
            self.consumer.seek(tp, pos)

    def _fetch_state(self, tp: TopicPartition) -> dict[str, Any]:
        """kafka-python's own view of one partition, for the log line that says why it is not fetched."""
        state = getattr(getattr(self.consumer, "_subscription", None), "assignment", {}).get(tp)
        if state is None:
            return {}
        return {name: bool(getattr(state, name, None)) for name in
                ("paused", "has_valid_position", "awaiting_validation", "awaiting_reset", "_pending_revocation")}

    def _check_joined(self) -> None:
        """kafka-python can spin for ever looking for a group coordinator it never finds (dpkp/kafka-python
        #1493, #2373). A member that stays out of a stable group that long exits for its supervisor to replace
        it. A stable member without partitions (more members than partitions) is fine."""
        coordinator = getattr(self.consumer, "_coordinator", None)
        stable = getattr(coordinator, "stable", None)
        if stable is None or stable():
            self._unjoined_since = None
            return
        now = self._clock()
        if self._unjoined_since is None:
            self._unjoined_since = now
        elif self.unjoined_exit_s and now - self._unjoined_since > self.unjoined_exit_s:
            raise ConsumerStuck(f"not in a stable consumer group for {now - self._unjoined_since:.0f}s "
                                f"(group {self.group_id}): exiting for a supervisor to restart the consumer")

    def _process_partition(self, tp: TopicPartition, records: list[Any]) -> None:
        tier = retry_tier(tp.topic, self.policy.topic_delays_s)
        if tier is None and self.batch_min_records and len(records) >= self.batch_min_records:
            self._process_backlog(tp, records)
            return
        done: int | None = None
        rec = None
        try:
            for rec in records:
                if tier is not None:
                    due = due_at(rec)
                    if due is not None and due > dt.datetime.now(dt.UTC):
                        # Not due yet: stop reading this retry partition until it is.
                        self.consumer.pause(tp)
                        self.consumer.seek(tp, rec.offset)
                        self._paused[tp] = due.timestamp()
                        return
                self._handle(rec, tier)
                done = rec.offset
                if self._stop.is_set():
                    return
        except StopRequested:
            if rec is not None:  # read it again if this consumer runs on: it was neither applied nor forwarded
                self.consumer.seek(tp, rec.offset)
            raise
        finally:
            if done is not None:
                # Committed only now: every record up to here is applied, a duplicate, skipped, forwarded or
                # dead-lettered (a crash before this line redelivers them; the applier dedupes).
                self.crash("before_offset_commit")
                self.consumer.commit({tp: OffsetAndMetadata(done + 1, None, -1)})

    def _resume_due(self) -> None:
        now = time.time()
        for tp, due in list(self._paused.items()):
            if due <= now:
                if tp in self.consumer.assignment():
                    self.consumer.resume(tp)
                del self._paused[tp]

    def _process_backlog(self, tp: TopicPartition, records: list[Any]) -> None:
        """A backlog: plain creates and updates of distinct aggregates go to QBO 30 at a time in one batch
        request (one request of the realm's budget instead of 30). Order per aggregate holds: a second event of
        an aggregate already in the batch sends the batch first. Anything unusual takes the one-by-one path."""
        pending: list[tuple[Any, Write]] = []
        done: int | None = None

        def flush() -> None:
            if not pending:
                return
            try:
                outcomes: list[Outcome | None] = self.applier.execute_batch([w for _, w in pending])
            except Exception as exc:  # noqa: BLE001 - the single path retries, recovers or dead-letters each
                log.warning("batch_failed", size=len(pending), error=repr(exc)[:300])
                outcomes = [None] * len(pending)
            for (rec, _), outcome in zip(pending, outcomes, strict=True):
                if outcome is None:
                    self._handle(rec, None)
                else:
                    self._count(base_topic(rec.topic), outcome)
            pending.clear()

        try:
            for rec in records:
                try:
                    event = decode_event(rec.value)
                    key = (event.aggregate_type, event.aggregate_id)
                    if len(pending) >= BATCH_LIMIT or any((w.event.aggregate_type, w.event.aggregate_id) == key
                                                 for _, w in pending):
                        flush()
                    prepared = self.applier.prepare(event, delivery_generation(rec, None))
                    if isinstance(prepared, Write) and prepared.batchable:
                        pending.append((rec, prepared))
                    else:  # a final outcome, or a write that goes alone (a void, an adoption, a settlement)
                        outcome = prepared if isinstance(prepared, Outcome) else self.applier.execute(prepared)
                        self._count(base_topic(rec.topic), outcome)
                except Exception:  # noqa: BLE001 - decode errors and the like: the single path handles them
                    flush()
                    self._handle(rec, None)
                if self._stop.is_set():
                    break
                done = rec.offset
            flush()
        finally:
            if done is not None and not pending:
                self.crash("before_offset_commit")
                self.consumer.commit({tp: OffsetAndMetadata(done + 1, None, -1)})

    def _count(self, topic: str, outcome: Outcome) -> None:
        self._outage_over()
        metrics.EVENTS.labels(topic, outcome.result).inc()
        self.stats.by_result[outcome.result] = self.stats.by_result.get(outcome.result, 0) + 1
        if outcome.result == "duplicate":
            self.stats.duplicates += 1
        elif outcome.result == "skipped":
            self.stats.skipped += 1
        else:
            self.stats.applied += 1
        self.stats.last_progress_at = time.monotonic()

    # -- one record ----------------------------------------------------------------------------------

    def _handle(self, rec: Any, tier: int | None) -> None:
        attempt = 0
        topic = base_topic(rec.topic)
        while True:
            started = time.monotonic()
            try:
                check_headers(rec)
                try:
                    event = decode_event(rec.value)
                except EventDecodeError as exc:
                    raise MalformedEvent(str(exc), code=exc.code) from exc
                outcome = self.applier.apply(event, delivery_generation(rec, tier))
                metrics.APPLY_SECONDS.observe(time.monotonic() - started)
                self._count(topic, outcome)
                return
            except Exception as raw:
                exc = as_sync_error(raw)
                attempt += 1
                self._outage_check(exc, rec)
                step = self.policy.next_step(exc, attempt, tier, failing_for_s=failing_for_s(rec),
                                             outage=self.breaker.is_open)
                log.warning("event_failed", topic=rec.topic, partition=rec.partition, offset=rec.offset,
                            error=type(raw).__name__, message=str(exc)[:500], attempt=attempt, step=step.kind.value,
                            tied_to_record=tied_to_record(exc))
                if step.kind is StepKind.STOP:
                    self._stop.set()
                    raise  # only FatalError stops, and as_sync_error never makes one: this is the original
                if step.kind is StepKind.RETRY_IN_PLACE:
                    self.stats.retried_in_place += 1
                    metrics.RETRIES.labels("in_place").inc()
                    if step.delay_s and getattr(exc, "retry_after_s", None):
                        metrics.THROTTLE_WAIT.inc(step.delay_s)
                    self.heartbeat = time.monotonic()  # waiting in place is the loop turning, not hanging
                    if self._stop.wait(step.delay_s) or self._run_over():
                        raise StopRequested("stopping: the record stays uncommitted and is read again") from raw
                    continue
                if step.kind is StepKind.RETRY_TOPIC:
                    now = dt.datetime.now(dt.UTC)
                    target = retry_topic(topic, self.policy.topic_delays_s[step.tier])
                    self._send(forward(rec, target_topic=target, error=exc, group_id=self.group_id,
                                       attempts_here=attempt, due_at=now + dt.timedelta(seconds=step.delay_s),
                                       now=now))
                    self.stats.forwarded_to_retry += 1
                    metrics.RETRIES.labels("retry_topic").inc()
                    metrics.EVENTS.labels(topic, "retry_topic").inc()
                    return
                self._send(forward(rec, target_topic=self.dlq, error=exc, group_id=self.group_id,
                                   attempts_here=attempt))
                self.stats.dead_lettered += 1
                metrics.DEAD_LETTERED.labels(getattr(exc, "code", type(exc).__name__)).inc()
                metrics.EVENTS.labels(topic, "dead_lettered").inc()
                log.error("event_dead_lettered", topic=rec.topic, partition=rec.partition, offset=rec.offset,
                          error=type(exc).__name__, reason=step.reason[:500])
                return

    def _outage_check(self, exc: BaseException, rec: Any) -> None:
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

    def _send(self, out: Any) -> None:
        """Forward and wait for the broker's acknowledgement: the offset may be committed only after it."""
        backoff = 0.5
        while True:
            try:
                self.producer.send(out.topic, key=out.key, value=out.value, headers=out.headers).get(timeout=30)
                return
            except Exception as exc:
                log.error("forward_failed", topic=out.topic, error=repr(exc), retry_in_s=backoff)
                if self._stop.wait(backoff):
                    raise StopRequested("stopping before the forward was acknowledged") from exc
                backoff = min(backoff * 2, 10)
