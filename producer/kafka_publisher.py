"""The relay's Kafka side: an idempotent, acks=all kafka-python producer behind a small port.

The port (``RecordPublisher``) is what the relay needs: send a batch, learn per record whether the broker
acknowledged it. Tests may swap in a fake; production uses ``KafkaRecordPublisher``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

from schemas.kafka_client import KafkaConnection, OutRecord, as_connection

log = structlog.get_logger("ttsync.relay.kafka")


class RecordPublisher(Protocol):
    def send(self, records: Sequence[OutRecord]) -> Any:
        """Start sending; returns a handle for ``wait``. Records of one call keep their order."""
        ...

    def wait(self, handle: Any) -> list[BaseException | None]:
        """Block until every record of ``handle`` is acknowledged or failed: per record None or the error."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class _Failed:
    error: BaseException
    count: int


class KafkaRecordPublisher:
    """kafka-python producer configured for an outbox relay: idempotent, acks=all, ordered per partition."""

    def __init__(self, bootstrap_servers: KafkaConnection | str, *, client_id: str = "ttsync-relay",
                 timeout_s: float = 15.0):
        self._connection = as_connection(bootstrap_servers)
        self._client_id = client_id
        self._timeout_s = timeout_s
        self._producer: KafkaProducer | None = None

    def _get(self) -> KafkaProducer:
        if self._producer is None:
            timeout_ms = int(self._timeout_s * 1000)
            self._producer = KafkaProducer(
                **self._connection.producer_config(self._client_id),
                # Idempotence keeps order with up to 5 requests in flight per connection.
                max_in_flight_requests_per_connection=5,
                linger_ms=0,
                batch_size=256 * 1024,
                request_timeout_ms=min(timeout_ms, 10_000),
                delivery_timeout_ms=timeout_ms + 10_000,
                max_block_ms=min(timeout_ms, 10_000),
                retry_backoff_ms=200,
            )
        return self._producer

    def send(self, records: Sequence[OutRecord]) -> Any:
        try:
            producer = self._get()
            return [producer.send(r.topic, key=r.key, value=r.value, headers=r.headers) for r in records]
        except KafkaError as exc:
            # The producer may be in a bad state (broker gone, epoch fenced): start afresh next time.
            self.reset()
            return _Failed(exc, len(records))

    def wait(self, handle: Any) -> list[BaseException | None]:
        if isinstance(handle, _Failed):
            return [handle.error] * handle.count
        futures = handle
        try:
            if self._producer is not None:
                self._producer.flush(timeout=self._timeout_s + 15)
        except KafkaError as exc:
            self.reset()
            return [exc] * len(futures)
        results: list[BaseException | None] = []
        for fut in futures:
            if fut.is_done:
                results.append(None if fut.succeeded() else (fut.exception or KafkaError("send failed")))
            else:
                results.append(KafkaTimeoutError("no acknowledgement before the flush timeout"))
        if any(r is not None for r in results):
            self.reset()
        return results

    def reset(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=0)
            except Exception as exc:  # noqa: BLE001 - closing a broken producer may fail; we drop it anyway
                log.warning("producer_close_failed", error=repr(exc))
            self._producer = None

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)
            self._producer = None


def delete_topics(bootstrap_servers: KafkaConnection | str, topics: Sequence[str]) -> None:
    """Delete these topics (the demo's own, at its end)."""
    admin = KafkaAdminClient(**as_connection(bootstrap_servers).client_config(), client_id="ttsync-admin")
    try:
        existing = set(admin.list_topics())
        doomed = [t for t in topics if t in existing]
        if doomed:
            admin.delete_topics(doomed)
    finally:
        admin.close()


def ensure_topics(bootstrap_servers: KafkaConnection | str, topics: Sequence[str], partitions: int, replication: int,
                  configs: dict[str, str] | None = None) -> list[str]:
    """Create the topics that do not exist yet (with ``configs``, e.g. retention); returns those created."""
    admin = KafkaAdminClient(**as_connection(bootstrap_servers).client_config(), client_id="ttsync-admin")
    try:
        existing = set(admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            try:
                admin.create_topics(
                    [NewTopic(t, num_partitions=partitions, replication_factor=replication,
                              topic_configs=dict(configs or {})) for t in missing]
                )
            except TopicAlreadyExistsError:
                pass  # another process created it meanwhile
        return missing
    finally:
        admin.close()
