"""Reading topics back in tests: their records, and their configuration."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from tests.pipeline import wait_until

# How often a reader looks for partitions of its topics it does not read yet (a topic the code under test creates
# while the test reads, such as the dead-letter topic).
_NEW_PARTITIONS_EVERY_S = 1.0


def read_topics(
    bootstrap: str,
    topics: Iterable[str],
    *,
    until: Callable[[list[Any]], bool] | None = None,
    timeout_s: float = 30.0,
    idle_s: float = 2.0,
) -> list[Any]:
    """All records of ``topics`` from the beginning, stopping when ``until(records)`` holds (or after
    ``idle_s`` without news once nothing more is expected), or at ``timeout_s``.

    The reader assigns itself every partition instead of joining a consumer group: what a test reads back must not
    depend on a group coordinator. A group-based reader once returned nothing for 60 s in CI (stop 35, the
    confluent case of test_concurrent_writers_and_two_relays_keep_order_per_aggregate) although the relay had
    every record acknowledged."""
    names = list(topics)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             enable_auto_commit=False)
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    assigned: set[TopicPartition] = set()
    looked_for_partitions = float("-inf")
    try:
        while time.monotonic() < deadline:
            if time.monotonic() - looked_for_partitions >= _NEW_PARTITIONS_EVERY_S:
                looked_for_partitions = time.monotonic()
                found = {TopicPartition(t, p) for t in names for p in consumer.partitions_for_topic(t)}
                if found - assigned:
                    assigned |= found
                    # Partitions read so far keep their positions (assign() preserves their state); the new ones
                    # start at the beginning (auto_offset_reset, no group and so no committed offset).
                    consumer.assign(sorted(assigned))
            if not assigned:
                time.sleep(0.2)
                continue
            batch = consumer.poll(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
                last_new = time.monotonic()
            if until is not None and until(records):
                break
            if until is None and records and time.monotonic() - last_new > idle_s:
                break
    finally:
        consumer.close()
    return records


def topic_configs(bootstrap: str, topic: str, timeout_s: float = 30.0) -> dict[str, dict[str, Any]]:
    """``topic``'s configuration as the broker describes it (name -> {"value", "config_source", ...}), asked until
    the broker has it. kafka-python describes a topic the broker has not yet learnt of from its controller (created
    a moment ago, a busy machine) as {}, not as an error: a test that read it once failed with a KeyError on CI's
    machine."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    entries: dict[str, dict[str, Any]] = {}

    def described() -> bool:
        entries.update(admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])["topic"]
                       .get(topic, {}))
        return bool(entries)

    try:
        wait_until(described, timeout_s, f"the broker to describe {topic}")
    finally:
        admin.close()
    return entries
