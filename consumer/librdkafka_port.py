"""``ConsumerPort`` on librdkafka (confluent-kafka), beside ``kafka_port.KafkaPythonConsumer``: the same loop, the
same guarantees (no auto-commit, a synchronous commit after a record is settled, idempotent acks=all forwards),
cooperative-sticky rebalancing, static membership when ``TTSYNC_CONSUMER_INSTANCE_ID`` is set.

Optional: ``pip install 'ttsync[librdkafka]'`` and ``TTSYNC_KAFKA_CLIENT=confluent``."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from consumer.kafka_port import BrokerUnavailable, Partition, PartitionsLost, PolledRecord
from schemas.kafka_client import KafkaConnection, OutRecord

log = structlog.get_logger("ttsync.consumer")


@dataclass(frozen=True)
class LibrdkafkaRecord:
    """A confluent-kafka ``Message`` as the loop reads records (its accessors are methods, not properties)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] | None
    timestamp: int


def _record(msg: Any) -> LibrdkafkaRecord:
    headers = msg.headers() or []
    return LibrdkafkaRecord(str(msg.topic()), int(msg.partition()), int(msg.offset()), msg.key(), msg.value(),
                            [(str(k), v if v is None or isinstance(v, bytes) else str(v).encode()) for k, v in headers],
                            int(msg.timestamp()[1]))


class LibrdkafkaConsumer:
    def __init__(self, connection: KafkaConnection, *, group_id: str, client_id: str, max_poll_records: int,
                 session_timeout_ms: int, instance_id: str | None = None) -> None:
        from confluent_kafka import Consumer, Producer

        config: dict[str, Any] = {
            **connection.librdkafka_config(), "group.id": group_id, "client.id": client_id,
            "enable.auto.commit": False, "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
            "session.timeout.ms": session_timeout_ms, "heartbeat.interval.ms": max(1000, session_timeout_ms // 4),
            # One event can wait a 429's Retry-After in place: allow it between polls.
            "max.poll.interval.ms": 900_000,
            "partition.assignment.strategy": "cooperative-sticky",
            "allow.auto.create.topics": False,  # never a topic with the broker's defaults (kafka_client.open_consumer)
        }
        if instance_id:
            config["group.instance.id"] = instance_id  # static membership: a restart within the session keeps it
        self._open = functools.partial(Consumer, config)
        self.consumer = self._open()
        self._topics: list[str] = []
        self.producer = Producer(connection.librdkafka_producer_config(f"{client_id}-forward"))
        self.max_poll_records = max_poll_records
        self._assigned: set[Partition] = set()
        self._paused: set[Partition] = set()

    # -- the group -----------------------------------------------------------------------------------

    def subscribe(self, topics: list[str]) -> None:
        def assigned(_consumer: Any, tps: list[Any]) -> None:
            self._assigned |= {Partition(tp.topic, tp.partition) for tp in tps}

        def revoked(_consumer: Any, tps: list[Any]) -> None:
            gone = {Partition(tp.topic, tp.partition) for tp in tps}
            self._assigned -= gone
            self._paused -= gone

        self.consumer.subscribe(topics, on_assign=assigned, on_revoke=revoked, on_lost=revoked)
        self._topics = list(topics)

    def renew_membership(self) -> None:
        from confluent_kafka import KafkaException

        try:
            self.consumer.close()
        except (KafkaException, RuntimeError) as exc:  # a client in a bad state may fail to leave; a new one joins
            log.warning("member_close_failed", error=str(exc))
        self._assigned, self._paused = set(), set()
        self.consumer = self._open()
        self.subscribe(self._topics)

    def poll(self, timeout_ms: int) -> dict[Partition, list[PolledRecord]]:
        out: dict[Partition, list[PolledRecord]] = {}
        for msg in self.consumer.consume(num_messages=self.max_poll_records, timeout=timeout_ms / 1000):
            err = msg.error()
            if err is not None:  # a broker or partition event, not a record: librdkafka retries by itself
                log.info("kafka_client_event", error=str(err))
                continue
            rec = _record(msg)
            tp = Partition(rec.topic, rec.partition)
            if tp in self._paused:  # fetched before the pause: read again once resumed (seek put it back)
                continue
            out.setdefault(tp, []).append(rec)
        return out

    def pause(self, tp: Partition) -> None:
        self.consumer.pause([self._tp(tp)])
        self._paused.add(tp)

    def resume(self, tp: Partition) -> None:
        self.consumer.resume([self._tp(tp)])
        self._paused.discard(tp)

    def paused(self) -> set[Partition]:
        return set(self._paused)

    def seek(self, tp: Partition, offset: int) -> None:
        self.consumer.seek(self._tp(tp, offset))

    def commit(self, tp: Partition, next_offset: int) -> None:
        from confluent_kafka import KafkaError, KafkaException

        lost = {KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS,
                KafkaError._ASSIGNMENT_LOST, KafkaError.FENCED_INSTANCE_ID}
        try:
            self.consumer.commit(offsets=[self._tp(tp, next_offset)], asynchronous=False)
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args and hasattr(exc.args[0], "code") else None
            if code in lost:
                raise PartitionsLost(str(exc)) from exc
            raise BrokerUnavailable(str(exc)) from exc

    def assignment(self) -> set[Partition]:
        return {Partition(tp.topic, tp.partition) for tp in self.consumer.assignment()}

    # One ListOffsets request for all the partitions, not librdkafka's get_watermark_offsets per partition: the
    # broker answers a connection's requests in order, so each of those waited behind this member's long-poll
    # fetch (fetch.wait.max.ms, 500 ms). The fetch watchdog asks for every assigned partition (60 with the default
    # topics): 30 s for the end offsets and as long again for the committed ones, every time the consumer went
    # quiet, while it polled nothing and a SIGTERM waited (seen in the chaos suite: killed after its 30 s grace).
    def end_offsets(self, tps: list[Partition]) -> dict[Partition, int]:
        from confluent_kafka import OFFSET_END

        return self._offsets_at(tps, OFFSET_END)

    def positions(self, tps: list[Partition]) -> dict[Partition, int]:
        """The fetch positions (the client's own), then one request for the committed offsets of the rest, then
        one for the start of those never committed."""
        from confluent_kafka import OFFSET_BEGINNING, KafkaException

        try:
            out = {Partition(tp.topic, tp.partition): int(tp.offset)
                   for tp in self.consumer.position([self._tp(tp) for tp in tps])}
            unknown = [tp for tp, offset in out.items() if offset < 0]  # librdkafka's OFFSET_INVALID: none yet
            if unknown:
                for tp in self.consumer.committed([self._tp(tp) for tp in unknown], timeout=5):
                    out[Partition(tp.topic, tp.partition)] = int(tp.offset)
        except KafkaException as exc:
            raise BrokerUnavailable(str(exc)) from exc
        known = {tp: offset for tp, offset in out.items() if offset >= 0}
        return known | self._offsets_at([tp for tp in out if tp not in known], OFFSET_BEGINNING)

    def _offsets_at(self, tps: list[Partition], which: int) -> dict[Partition, int]:
        """``which``: OFFSET_END or OFFSET_BEGINNING, asked of the partitions' leaders in one request each."""
        from confluent_kafka import KafkaException, TopicPartition

        if not tps:
            return {}
        try:
            found = self.consumer.offsets_for_times([TopicPartition(tp.topic, tp.partition, which) for tp in tps],
                                                    timeout=5)
        except KafkaException as exc:
            raise BrokerUnavailable(str(exc)) from exc
        return {Partition(tp.topic, tp.partition): int(tp.offset) for tp in found
                if tp.error is None and tp.offset >= 0}

    def in_stable_group(self) -> bool | None:
        return None  # librdkafka rejoins by itself and does not say; the group watchdog is for kafka-python

    def fetch_state(self, tp: Partition) -> dict[str, Any]:
        return {"assigned": tp in self._assigned, "paused": tp in self._paused}

    def send(self, record: OutRecord, timeout_s: float = 30.0) -> None:
        delivered: list[Any] = []
        self.producer.produce(record.topic, value=record.value, key=record.key, headers=list(record.headers),
                              on_delivery=lambda err, _msg: delivered.append(err))
        self.producer.flush(timeout_s)
        if not delivered:
            raise BrokerUnavailable(f"no acknowledgement for a record to {record.topic} within {timeout_s:.0f}s")
        if delivered[0] is not None:
            raise BrokerUnavailable(f"the broker refused a record to {record.topic}: {delivered[0]}")

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.producer.flush(10)

    @staticmethod
    def _tp(tp: Partition, offset: int | None = None) -> Any:
        from confluent_kafka import TopicPartition

        return TopicPartition(tp.topic, tp.partition) if offset is None else \
            TopicPartition(tp.topic, tp.partition, offset)
