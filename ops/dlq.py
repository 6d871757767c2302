"""``ttsync dlq list|show|replay``: inspect dead-lettered records and send them back once their cause is fixed.

Replay publishes a record to its original topic (from its headers) with its key, value and headers, plus a
replay count; the consumer's dedupe keys make a second replay of an applied event a no-op. Replay keeps its own
position in a consumer group (``<group>-dlq-replay``), so an interrupted replay resumes where it stopped
(``--from-beginning`` scans the whole topic again).
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from schemas.codec import headers_to_dict
from schemas.contract import DLQ_REPLAY_GROUP_SUFFIX, Header
from schemas.kafka_client import KafkaConnection, as_connection, open_consumer


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    timestamp: float
    key: str | None
    value: bytes | None
    headers: dict[str, str]
    raw_headers: list[tuple[str, bytes]]

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def event_type(self) -> str:
        if Header.EVENT_TYPE in self.headers:
            return self.headers[Header.EVENT_TYPE]
        try:
            return str(json.loads(self.value or b"").get("event_type", "?"))
        except (ValueError, AttributeError):
            return "?"

    @property
    def error_code(self) -> str:
        return self.headers.get(Header.ERROR_CODE, "?")

    @property
    def error_class(self) -> str:
        return self.headers.get(Header.ERROR_CLASS, "?")

    @property
    def original_topic(self) -> str | None:
        return self.headers.get(Header.ORIGINAL_TOPIC)

    @property
    def replay_count(self) -> int:
        return int(self.headers.get(Header.REPLAY_COUNT, "0") or 0)

    @property
    def event_id(self) -> str | None:
        return self.headers.get(Header.EVENT_ID)

    def summary(self) -> dict[str, Any]:
        return {
            "ref": self.ref, "dead_lettered_at": dt.datetime.fromtimestamp(self.timestamp, dt.UTC).isoformat(),
            "event_type": self.event_type, "aggregate_id": self.key, "error_code": self.error_code,
            "error_class": self.error_class, "message": self.headers.get(Header.ERROR_MESSAGE, ""),
            "qbo_fault_code": self.headers.get(Header.QBO_FAULT_CODE), "original_topic": self.original_topic,
            "attempts": int(self.headers.get(Header.ATTEMPTS, "0") or 0), "replay_count": self.replay_count,
        }

    def full(self) -> dict[str, Any]:
        try:
            value: Any = json.loads(self.value or b"")
        except ValueError:
            value = (self.value or b"").decode("utf-8", "replace")
        return {**self.summary(), "headers": self.headers, "value": value}


@dataclass(frozen=True)
class DlqFilter:
    event_type: str | None = None
    aggregate_id: str | None = None
    error: str | None = None  # a code ("missing_account", "6240") or part of the error class
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def matches(self, d: DeadLetter) -> bool:
        if self.event_type and d.event_type != self.event_type and not d.event_type.startswith(self.event_type + "."):
            return False
        if self.aggregate_id and d.key != self.aggregate_id:
            return False
        if self.error and self.error not in (d.error_code, d.headers.get(Header.QBO_FAULT_CODE)) \
                and self.error not in d.error_class:
            return False
        ts = dt.datetime.fromtimestamp(d.timestamp, dt.UTC)
        if self.since and ts < self.since:
            return False
        return not (self.until and ts > self.until)


def _to_dead_letter(rec: Any) -> DeadLetter:
    raw = [(k, v or b"") for k, v in (rec.headers or [])]
    return DeadLetter(rec.partition, rec.offset, rec.timestamp / 1000.0,
                      rec.key.decode("utf-8", "replace") if rec.key is not None else None, rec.value,
                      headers_to_dict(raw), raw)


def scan(bootstrap: KafkaConnection | str, topic: str, *, group: str | None = None, from_beginning: bool = True,
         timeout_s: float = 10.0) -> Iterator[tuple[TopicPartition, DeadLetter]]:
    """Every record of the DLQ up to its end when the scan started (from the group's position if given)."""
    consumer = open_consumer(bootstrap, group_id=group, enable_auto_commit=False,
                             client_id=f"ttsync-dlq-{uuid.uuid4().hex[:6]}")
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or [])
        tps = [TopicPartition(topic, p) for p in partitions]
        if not tps:
            return
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        starts = consumer.beginning_offsets(tps)
        committed = {tp: (consumer.committed(tp) if group and not from_beginning else None) for tp in tps}
        for tp in tps:
            consumer.seek(tp, committed[tp] if committed[tp] is not None else starts[tp])
        remaining = {tp for tp in tps if consumer.position(tp) < ends[tp]}
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=300).items():
                for rec in records:
                    if rec.offset >= ends[tp]:
                        remaining.discard(tp)
                        break
                    yield tp, _to_dead_letter(rec)
                    deadline = time.monotonic() + timeout_s
                    if rec.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
    finally:
        consumer.close()


def list_dead_letters(bootstrap: KafkaConnection | str, topic: str,
                      flt: DlqFilter) -> tuple[list[DeadLetter], Counter[str]]:
    found = [d for _, d in scan(bootstrap, topic) if flt.matches(d)]
    return found, Counter(d.error_code for d in found)


DLQ_STATES = ("open", "replayed", "resolved")


def dead_letter_state(d: DeadLetter, replay_position: int | None, processed: set[str]) -> str:
    """resolved: its event has been applied since (the consumer knows its event id); replayed: a replay sent it
    back (the replay position, which never passes a record it did not replay, is beyond it) and it has not been
    applied yet; open: neither, it waits for an operator."""
    if d.event_id and d.event_id in processed:
        return "resolved"
    if replay_position is not None and d.offset < replay_position:
        return "replayed"
    return "open"


def replay_positions(bootstrap: KafkaConnection | str, topic: str, base_group: str) -> dict[int, int | None]:
    """The replay group's saved position in each partition of the dead-letter topic (None: never replayed)."""
    consumer = open_consumer(bootstrap, enable_auto_commit=False,
                             group_id=base_group + DLQ_REPLAY_GROUP_SUFFIX)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in consumer.partitions_for_topic(topic) or []}
    finally:
        consumer.close()


def show(bootstrap: KafkaConnection | str, topic: str, ref: str) -> DeadLetter | None:
    partition, _, offset = ref.partition(":")
    consumer = open_consumer(bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, int(partition))
        consumer.assign([tp])
        consumer.seek(tp, int(offset))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for rec in consumer.poll(timeout_ms=300).get(tp, []):
                return _to_dead_letter(rec) if rec.offset == int(offset) else None
        return None
    finally:
        consumer.close()


@dataclass
class ReplayResult:
    considered: int = 0
    replayed: int = 0
    skipped_no_origin: int = 0
    dry_run: bool = False


def replay(bootstrap: KafkaConnection | str, topic: str, base_group: str, flt: DlqFilter, *, dry_run: bool = False,
           limit: int | None = None, rate_per_s: float | None = None, from_beginning: bool = False,
           on_record: Callable[[DeadLetter, bool], None] | None = None) -> ReplayResult:
    """Send matching dead letters back to their original topics, committing the replay position as it goes."""
    group = base_group + DLQ_REPLAY_GROUP_SUFFIX
    result = ReplayResult(dry_run=dry_run)
    connection = as_connection(bootstrap)
    producer = None if dry_run else KafkaProducer(**connection.client_config(), acks="all", enable_idempotence=True,
                                                   max_request_size=8 * 1024 * 1024)
    committer = None if dry_run else open_consumer(connection, group_id=group,
                                                   enable_auto_commit=False)
    # Per partition: may the saved position still move? Only over records replayed, never past one a filter
    # skipped (a mistyped --error must not hide dead letters from the next, correct replay). Records replayed
    # after a skipped one stay behind the position: replaying them again is a no-op for the consumer, which
    # knows their event ids.
    movable: dict[Any, bool] = {}
    try:
        for tp, d in scan(connection, topic, group=group, from_beginning=from_beginning):
            if limit is not None and result.replayed >= limit:
                break
            result.considered += 1
            chosen = flt.matches(d)
            if chosen and not d.original_topic:
                result.skipped_no_origin += 1
                chosen = False
            if chosen:
                if producer is not None:
                    headers = [(k, v) for k, v in d.raw_headers if k != Header.REPLAY_COUNT]
                    headers.append((Header.REPLAY_COUNT, str(d.replay_count + 1).encode()))
                    producer.send(d.original_topic, key=d.key.encode() if d.key is not None else None,
                                  value=d.value, headers=headers).get(timeout=30)
                result.replayed += 1
                if rate_per_s:
                    time.sleep(1.0 / rate_per_s)
            if on_record is not None:
                on_record(d, chosen)
            movable[tp] = movable.get(tp, True) and chosen
            if committer is not None and movable[tp]:
                # The position moves only after the record went out: an interrupted replay resumes here.
                committer.commit({tp: OffsetAndMetadata(d.offset + 1, None, -1)})
    finally:
        if producer is not None:
            producer.close()
        if committer is not None:
            committer.close()
    return result
