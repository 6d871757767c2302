"""The consumer's parts on fakes: an in-memory QBO, a SQLite state store, and (for the loop) a stub broker."""

from __future__ import annotations

import uuid
from typing import Any

from consumer.applier import EventApplier
from consumer.crash_points import CrashHook, no_crash
from consumer.group_consumer import GroupConsumer
from consumer.lifecycle import SyncPolicy
from consumer.mapping import MappingOptions
from consumer.outage import OutageBreaker
from consumer.references import ReferenceResolver, ResolverConfig
from consumer.retry_policy import RetryPolicy
from consumer.state_store import StateStore
from producer import migrate
from producer.database import make_engine
from schemas.codec import encode_event, record_headers
from schemas.events import EventEnvelope
from tests.fakes import InMemoryQbo, StubBroker

REALM = "9130000000000001"


class FakeParts:
    def __init__(self, tmp: Any, **qbo_config: Any) -> None:
        self.engine = make_engine(f"sqlite:///{tmp}/state-{uuid.uuid4().hex[:6]}.sqlite3")
        migrate.upgrade(self.engine)
        self.qbo = InMemoryQbo(REALM, **qbo_config)
        self.store = StateStore(self.engine, REALM, "ttsync-test")
        self.resolver = ReferenceResolver(self.qbo, self.store, ResolverConfig(), MappingOptions())
        self.applier = EventApplier(self.qbo, self.store, self.resolver, SyncPolicy(), MappingOptions())

    def entities(self, entity: str) -> list[dict[str, Any]]:
        return self.qbo.query(f"SELECT * FROM {entity} MAXRESULTS 1000", entity)  # QBO answers 100 without it

    def writes(self, operation: str, entity: str) -> int:
        return self.qbo.calls.count((operation, entity))

    def group(self, broker: StubBroker, *, prefix: str = "tt", policy: RetryPolicy | None = None,
              crash: CrashHook = no_crash, batch_min_records: int = 10,
              breaker: OutageBreaker | None = None) -> GroupConsumer:
        policy = policy or RetryPolicy(inplace_attempts=1, backoff_base_s=0.001, backoff_max_s=0.01,
                                       topic_delays_s=(10, 60))
        return GroupConsumer(port=broker.consumer("ttsync-test"), group_id="ttsync-test", topic_prefix=prefix,
                             applier=self.applier, policy=policy, batch_min_records=batch_min_records,
                             breaker=breaker, crash=crash)

    def close(self) -> None:
        self.engine.dispose()


def publish(broker: StubBroker, event: EventEnvelope, prefix: str = "tt") -> None:
    """As the relay does: to the aggregate's topic, keyed by aggregate id, with the event's headers."""
    broker.produce(f"{prefix}.{event.aggregate_type}", encode_event(event), event.aggregate_id.encode(),
                   record_headers(str(event.event_id), event.event_type, event.aggregate_version))
