"""The relay's Kafka side on librdkafka (confluent-kafka): the same port as ``KafkaRecordPublisher``, the same
guarantees (idempotent, acks=all, order per partition), a much faster client.

Optional: ``pip install 'ttsync[librdkafka]'`` and ``TTSYNC_KAFKA_CLIENT=confluent``. kafka-python stays the
default (the design's client); this one is for a relay that must drain a backlog at the broker's pace.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from schemas.kafka_client import KafkaConnection, OutRecord, as_connection

log = structlog.get_logger("ttsync.relay.kafka")


class DeliveryFailed(Exception):
    """The broker did not acknowledge a record (librdkafka's KafkaError as text, its code kept)."""

    def __init__(self, message: str, *, code: int | None = None, retriable: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.retriable = retriable


def relay_producer_config(connection: KafkaConnection, client_id: str, timeout_s: float) -> dict[str, Any]:
    """The relay's librdkafka producer (also the benchmark's bare producer, so that the two are compared on the
    same settings): delivery reports for failed records only. A batch waits for the producer's queue to empty, so
    a record without a report was acknowledged; a Python call per acknowledged record cost the relay a tenth of its
    time (py-spy, 50,000 records)."""
    return {**connection.librdkafka_producer_config(client_id, timeout_s), "delivery.report.only.error": True}


@dataclass
class _Sent:
    """A batch on its way: its records, and those librdkafka reported failed (by position in the batch)."""

    records: Sequence[OutRecord]
    failed: dict[int, BaseException] = field(default_factory=dict)
    reports: list[tuple[Any, Any]] = field(default_factory=list)  # (error, message) as librdkafka reported them

    def on_delivery(self, err: Any, msg: Any) -> None:
        # Called for failed records only; matched to their position when the batch is waited for.
        self.reports.append((err, msg))

    def positions_of_reports(self) -> None:
        """Match each failure report to a record of the batch by topic, key and value (the first unmatched one
        when two records are identical: either stands for the other)."""
        if not self.reports:
            return
        positions: dict[tuple[str, bytes | None, bytes | None], list[int]] = {}
        for i, r in enumerate(self.records):
            positions.setdefault((r.topic, r.key, r.value), []).append(i)
        for err, msg in self.reports:
            waiting = [i for i in positions.get((msg.topic(), msg.key(), msg.value()), []) if i not in self.failed]
            error = DeliveryFailed(str(err), code=err.code(), retriable=bool(err.retriable()))
            if waiting:
                self.failed[waiting[0]] = error
            else:  # cannot happen unless librdkafka changed a record: fail the batch rather than guess
                self.failed.update({i: error for i in range(len(self.records)) if i not in self.failed})
        self.reports.clear()


class LibrdkafkaRecordPublisher:
    def __init__(self, bootstrap_servers: KafkaConnection | str, *, client_id: str = "ttsync-relay",
                 timeout_s: float = 15.0) -> None:
        self._connection = as_connection(bootstrap_servers)
        self._client_id = client_id
        self._timeout_s = timeout_s
        self._producer: Any = None
        self._get()  # connected before the first record, whose commit-to-Kafka time must not pay for it

    def _get(self) -> Any:
        if self._producer is None:
            from confluent_kafka import Producer

            self._producer = Producer(relay_producer_config(self._connection, self._client_id, self._timeout_s))
            try:  # connect now (metadata, the idempotent producer's id), not on the first record's clock
                self._producer.list_topics(timeout=min(self._timeout_s, 5.0))
            except Exception as exc:  # noqa: BLE001 - the broker may be away: sends will wait and report it
                log.info("producer_warm_up_failed", error=repr(exc))
        return self._producer

    def send(self, records: Sequence[OutRecord]) -> _Sent:
        from confluent_kafka import KafkaException

        sent = _Sent(records)
        report = sent.on_delivery  # one callback for the batch: a closure per record cost as much as its headers
        producer = self._get()
        produce = producer.produce
        for i, r in enumerate(records):
            while True:
                try:
                    produce(r.topic, value=r.value, key=r.key, headers=r.headers, on_delivery=report)
                    break
                except BufferError:  # the local queue is full: let deliveries drain, then go on
                    producer.poll(0.05)
                except KafkaException as exc:
                    sent.failed[i] = DeliveryFailed(str(exc))
                    break
        producer.poll(0)
        return sent

    def wait(self, handle: _Sent) -> list[BaseException | None]:
        """Every record acknowledged or reported failed once the producer's queue is empty: only one batch is in
        flight at a time (the relay sends the next after committing this one)."""
        producer = self._get()
        deadline = time.monotonic() + self._timeout_s + 15
        while len(producer) and time.monotonic() < deadline:
            producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
        handle.positions_of_reports()
        results: list[BaseException | None] = [handle.failed.get(i) for i in range(len(handle.records))]
        if len(producer):
            # Still unacknowledged past librdkafka's own message timeout: which records is unknown, so none of
            # the batch counts as published (the acknowledged ones are sent again; consumers drop the copies).
            timed_out = DeliveryFailed("no acknowledgement before the flush timeout")
            results = [r or timed_out for r in results]
        if any(isinstance(r, DeliveryFailed) and not r.retriable for r in results):
            # A fatal error (an idempotent producer fenced, say) leaves the producer unusable: start afresh.
            self.reset()
        return results

    def reset(self) -> None:
        if self._producer is not None:
            try:
                self._producer.flush(0)
            except Exception as exc:  # noqa: BLE001 - a broken producer may fail to flush; we drop it anyway
                log.warning("producer_close_failed", error=repr(exc))
            self._producer = None

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None
