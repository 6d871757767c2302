"""The consumer's port to Kafka: what ``GroupConsumer`` needs of a broker (poll, pause/resume, seek, commit, send),
with the kafka-python adapter. ``tests.fakes.StubBroker`` implements the same port in memory (as dramatiq's
``StubBroker``), so the loop's rules are tested in seconds and proven on a real broker by the integration and
chaos suites.

Partitions are ``(topic, partition)`` named tuples: kafka-python's ``TopicPartition`` is one, and equal to ours."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import structlog
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTopicPartition
from kafka.errors import (
    CommitFailedError,
    FencedInstanceIdError,
    IllegalGenerationError,
    KafkaError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from kafka.structs import OffsetAndMetadata

from schemas.kafka_client import KafkaConnection, OutRecord, open_consumer

log = structlog.get_logger("ttsync.consumer.kafka")


class Partition(NamedTuple):
    topic: str
    partition: int


class PolledRecord(Protocol):
    """What the consumer reads of a record (kafka-python's ``ConsumerRecord`` has it all)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]] | None: ...


class BrokerUnavailable(Exception):
    """The broker did not answer a request that has no record at fault (metadata, offsets): try again later."""


class PartitionsLost(Exception):
    """An offset commit the group refused: this member is no longer the owner (a rebalance, or a session that
    expired while the broker was away). Its uncommitted records go to the partition's next owner, which may be
    this member again once it has rejoined; nothing is lost, and nothing is for the process to exit over."""


class ConsumerPort(Protocol):
    def subscribe(self, topics: list[str]) -> None:
        """Join the group for ``topics`` (metadata first: a leader without it assigns nothing)."""

    def poll(self, timeout_ms: int) -> dict[Partition, list[PolledRecord]]:
        """Raises ``BrokerUnavailable`` when the client says the broker is away (the loop waits for it)."""

    def pause(self, tp: Partition) -> None: ...

    def resume(self, tp: Partition) -> None: ...

    def paused(self) -> set[Partition]: ...

    def seek(self, tp: Partition, offset: int) -> None: ...

    def commit(self, tp: Partition, next_offset: int) -> None:
        """Commit ``next_offset`` (the offset after the last record done) for ``tp``, synchronously."""

    def assignment(self) -> set[Partition]: ...

    def end_offsets(self, tps: list[Partition]) -> dict[Partition, int]:
        """Raises ``BrokerUnavailable`` when the broker does not answer."""

    def positions(self, tps: list[Partition]) -> dict[Partition, int]:
        """The next offset this member reads of each of ``tps``: its fetch position, else the group's committed
        offset, else the partition's start. Raises ``BrokerUnavailable`` when the broker does not answer."""

    def in_stable_group(self) -> bool | None:
        """Whether this member is in a stable group; None when the client cannot tell."""

    def fetch_state(self, tp: Partition) -> dict[str, Any]:
        """The client's own view of one partition, for a log line."""

    def send(self, record: OutRecord, timeout_s: float = 30.0) -> None:
        """Produce and wait for the broker's acknowledgement; raises when it does not come."""

    def renew_membership(self) -> None:
        """Leave the group and join it again as a fresh member, in this process: what a restart by a supervisor
        would do. The fresh member reads from the committed offsets; what the old one fetched is read again.
        Raises ``BrokerUnavailable`` when the fresh member cannot reach the broker; calling it again tries again."""

    def close(self) -> None: ...


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


# Commit errors that say the group moved on, not that the broker is away. kafka-python 3.0.12 raises
# RebalanceInProgressError itself when its member is mid-rebalance ("You can try completing the rebalance by
# calling poll()"): only a poll completes it, so waiting for the broker would wait for ever (seen in a rolling
# restart of three brokers).
GROUP_REFUSED = (CommitFailedError, RebalanceInProgressError, UnknownMemberIdError, IllegalGenerationError,
                 FencedInstanceIdError)


def _away_or_raise(exc: KafkaError) -> Exception:
    """What the loop should see of a kafka-python error outside a commit: a retriable one (no connection, a
    timeout, no coordinator) says the broker is away, and the loop waits; any other (an ACL, a setting) is
    itself, and ends the consumer with its message. #21 soak, seed 1203: a raw KafkaConnectionError (ECONNREFUSED)
    escaped the loop during a 12 s broker restart and the consumer exited for its supervisor."""
    return BrokerUnavailable(f"{type(exc).__name__}: {exc}") if exc.retriable else exc


class KafkaPythonConsumer:
    """``ConsumerPort`` on kafka-python: a group consumer without auto-commit and an idempotent producer for the
    retry and dead-letter forwards."""

    def __init__(self, connection: KafkaConnection, *, group_id: str, client_id: str, max_poll_records: int,
                 session_timeout_ms: int, instance_id: str | None = None) -> None:
        static = {"group_instance_id": instance_id} if instance_id else {}  # static membership
        self._open = functools.partial(
            open_consumer, connection, group_id=group_id, client_id=client_id, **static,
            enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=max_poll_records,
            session_timeout_ms=session_timeout_ms, heartbeat_interval_ms=max(1000, session_timeout_ms // 4),
            # One event can wait a 429's Retry-After in place: allow it between polls.
            max_poll_interval_ms=900_000, metadata_max_age_ms=30_000,
        )
        self.consumer: KafkaConsumer = self._open()
        self.producer = KafkaProducer(**connection.producer_config(f"{client_id}-forward"))
        self._topics: list[str] = []

    def subscribe(self, topics: list[str]) -> None:
        try:
            # Metadata of every topic before the first join: a group leader without it assigns nothing ("No
            # partition metadata for topic ...") and the member waits for a metadata refresh (up to
            # metadata_max_age_ms) and another rebalance before it reads anything.
            self.consumer.partitions_for_topic(topics[0])
        except KafkaError as exc:  # the broker is away: subscribing waits for it anyway
            log.info("metadata_prefetch_failed", error=f"{type(exc).__name__}: {exc}")
        self.consumer.subscribe(topics)
        self._topics = list(topics)

    def renew_membership(self) -> None:
        # Seen after a broker restart (#21): the member rejoined its group and then fetched none of its partitions.
        # A new KafkaConsumer starts with no fetch, coordinator or metadata state of the old one.
        try:
            self.consumer.close(autocommit=False)
        except Exception as exc:  # noqa: BLE001 - a client in a bad state may fail to leave; the new one joins anyway
            log.warning("member_close_failed", error=f"{type(exc).__name__}: {exc}")
        try:
            # A new KafkaConsumer bootstraps in its constructor: with the broker away it fails after its timeout,
            # and renewing again (the old member is closed either way) opens another.
            self.consumer = self._open()
        except KafkaError as exc:
            raise _away_or_raise(exc) from exc
        self.subscribe(self._topics)

    def poll(self, timeout_ms: int) -> dict[Partition, list[PolledRecord]]:
        release_parked_records(self.consumer)
        try:
            polled = self.consumer.poll(timeout_ms=timeout_ms)
        except KafkaError as exc:
            raise _away_or_raise(exc) from exc
        return {Partition(tp.topic, tp.partition): records for tp, records in polled.items()}

    def pause(self, tp: Partition) -> None:
        self.consumer.pause(KafkaTopicPartition(*tp))

    def resume(self, tp: Partition) -> None:
        self.consumer.resume(KafkaTopicPartition(*tp))

    def paused(self) -> set[Partition]:
        return {Partition(tp.topic, tp.partition) for tp in self.consumer.paused()}

    def seek(self, tp: Partition, offset: int) -> None:
        self.consumer.seek(KafkaTopicPartition(*tp), offset)

    def commit(self, tp: Partition, next_offset: int) -> None:
        try:
            self.consumer.commit({KafkaTopicPartition(*tp): OffsetAndMetadata(next_offset, None, -1)})
        except GROUP_REFUSED as exc:
            raise PartitionsLost(f"{type(exc).__name__}: {exc}") from exc
        except KafkaError as exc:  # KafkaTimeoutError, NoBrokersAvailable...: the broker is away
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def assignment(self) -> set[Partition]:
        return {Partition(tp.topic, tp.partition) for tp in self.consumer.assignment()}

    def end_offsets(self, tps: list[Partition]) -> dict[Partition, int]:
        try:
            ends = self.consumer.end_offsets([KafkaTopicPartition(*tp) for tp in tps])
        except KafkaError as exc:
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return {Partition(tp.topic, tp.partition): end for tp, end in ends.items() if end is not None}

    def positions(self, tps: list[Partition]) -> dict[Partition, int]:
        try:
            return {tp: int(self.consumer.position(KafkaTopicPartition(*tp))) for tp in tps}
        except KafkaError as exc:
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def in_stable_group(self) -> bool | None:
        # kafka-python keeps it on its coordinator (no public API).
        stable = getattr(getattr(self.consumer, "_coordinator", None), "stable", None)
        return None if stable is None else bool(stable())

    def fetch_state(self, tp: Partition) -> dict[str, Any]:
        state = getattr(getattr(self.consumer, "_subscription", None), "assignment", {}).get(KafkaTopicPartition(*tp))
        if state is None:
            return {}
        return {name: bool(getattr(state, name, None)) for name in
                ("paused", "has_valid_position", "awaiting_validation", "awaiting_reset", "_pending_revocation")}

    def send(self, record: OutRecord, timeout_s: float = 30.0) -> None:
        self.producer.send(record.topic, key=record.key, value=record.value, headers=record.headers
                           ).get(timeout=timeout_s)

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.producer.close(timeout=10)
