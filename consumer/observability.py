"""What the consumer's /metrics and /healthz report beyond its counters: lag per partition, measured from the
broker on each scrape (the same numbers as ``ttsync lag --json``), and readiness of broker and database."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, text

from consumer.lag import measure
from schemas.kafka_client import KafkaConnection, as_connection
from ttsync.local_services import kafka_answers

# kafka-lag-exporter's names, so its dashboards and alerts read ours.
LAG_MESSAGES, LAG_SECONDS, COMMITTED_OFFSET = (
    "kafka_consumergroup_group_lag", "kafka_consumergroup_group_lag_seconds", "kafka_consumergroup_group_offset")


class LagCollector(Collector):
    FAMILIES = (LAG_MESSAGES, LAG_SECONDS, COMMITTED_OFFSET)

    def __init__(self, bootstrap: KafkaConnection | str, group: str) -> None:
        self.bootstrap = bootstrap
        self.group = group

    def collect(self) -> Iterator[Any]:
        messages = GaugeMetricFamily(LAG_MESSAGES, "Messages behind the log end",
                                     labels=["group", "topic", "partition"])
        seconds = GaugeMetricFamily(LAG_SECONDS,
                                    "Age of the oldest unconsumed record", labels=["group", "topic", "partition"])
        committed = GaugeMetricFamily(COMMITTED_OFFSET, "Committed offset",
                                      labels=["group", "topic", "partition"])
        try:
            result = measure(self.bootstrap, self.group)
        except Exception:  # noqa: BLE001 - a scrape without lag beats a failed scrape; /healthz says why
            result = None
        for p in result.partitions if result else []:
            labels = [self.group, p.topic, str(p.partition)]
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
