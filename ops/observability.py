"""What the consumer's /metrics and /healthz report beyond its counters: lag per partition, measured from the
broker on each scrape (the same numbers as ``ttsync lag --json``), and readiness of broker and database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, text

from ops.lag import measure
from ops.probe import kafka_answers
from schemas.kafka_client import KafkaConnection, as_connection

# kafka-lag-exporter's names and labels, so its dashboards and alerts read ours unchanged.
LAG_MESSAGES, LAG_SECONDS, COMMITTED_OFFSET = (
    "kafka_consumergroup_group_lag", "kafka_consumergroup_group_lag_seconds", "kafka_consumergroup_group_offset")
LABELS = ["cluster_name", "group", "topic", "partition", "member_host", "consumer_id", "client_id"]


class LagCollector(Collector):
    """The group's lag, each partition exported once: by the replica that owns it (``owned``), so that summing
    over the replicas counts every partition once, as kafka-lag-exporter's one series per partition does."""

    FAMILIES = (LAG_MESSAGES, LAG_SECONDS, COMMITTED_OFFSET)

    def __init__(self, bootstrap: KafkaConnection | str, group: str, *, cluster_name: str = "default",
                 owned: Callable[[], set[tuple[str, int]]] | None = None) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.cluster_name = cluster_name
        self.owned = owned

    def collect(self) -> Iterator[Any]:
        messages = GaugeMetricFamily(LAG_MESSAGES, "Messages behind the log end", labels=LABELS)
        seconds = GaugeMetricFamily(LAG_SECONDS, "Age of the oldest unconsumed record", labels=LABELS)
        committed = GaugeMetricFamily(COMMITTED_OFFSET, "Committed offset", labels=LABELS)
        mine: set[tuple[str, int]] | None = None
        try:
            result = measure(self.bootstrap, self.group)
            mine = self.owned() if self.owned is not None else None
        except Exception:  # noqa: BLE001 - a scrape without lag beats a failed scrape; /healthz says why
            result = None
        for p in result.partitions if result else []:
            if mine is not None and (p.topic, p.partition) not in mine:
                continue  # another replica owns it and exports it
            labels = [self.cluster_name, self.group, p.topic, str(p.partition), p.member_host, p.consumer_id,
                      p.client_id]
            # Without a committed offset, what is there to read: a backlog nobody started must still alert.
            messages.add_metric(labels, p.lag if p.lag is not None else p.from_log_start)
            seconds.add_metric(labels, p.lag_seconds)
            if p.committed is not None:
                committed.add_metric(labels, p.committed)
        yield from (messages, seconds, committed)


def readiness(bootstrap: KafkaConnection | str, engine: Engine) -> dict[str, str]:
    problems = {"broker": "", "database": ""}
    if not kafka_answers(bootstrap, timeout_s=2):
        problems["broker"] = f"no Kafka broker answers at {as_connection(bootstrap).bootstrap_servers}"
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        problems["database"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return problems
