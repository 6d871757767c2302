"""The relay's /metrics: outbox backlog and oldest age (queried on each scrape), published and failed totals."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from producer.outbox_relay import OutboxRelay
from producer.outbox_status import outbox_status

PUBLISHED = "ttsync_outbox_published"
PUBLISH_FAILURES = "ttsync_outbox_publish_failures"
BACKLOG = "ttsync_outbox_backlog"
OLDEST_AGE = "ttsync_outbox_oldest_unpublished_age_seconds"
FAILING_ROWS = "ttsync_outbox_failing_rows"
BUCKETS_HELD = "ttsync_relay_buckets_held"


class RelayCollector(Collector):
    FAMILIES = (PUBLISHED, PUBLISH_FAILURES, BACKLOG, OLDEST_AGE, FAILING_ROWS, BUCKETS_HELD)

    def __init__(self, engine: Engine, relay: OutboxRelay) -> None:
        self.engine = engine
        self.relay = relay

    def collect(self) -> Iterator[Any]:
        published = CounterMetricFamily(PUBLISHED, "Outbox rows published by this relay")
        published.add_metric([], self.relay.stats.published)
        failed = CounterMetricFamily(PUBLISH_FAILURES, "Outbox rows the broker refused")
        failed.add_metric([], self.relay.stats.failed)
        yield from (published, failed)
        try:
            status = outbox_status(self.engine)
        except Exception:  # noqa: BLE001 - /healthz reports the database; the scrape goes on
            return
        backlog = GaugeMetricFamily(BACKLOG, "Unpublished outbox rows", labels=["aggregate_type"])
        for agg, n in status["backlog_by_type"].items():
            backlog.add_metric([agg], n)
        age = GaugeMetricFamily(OLDEST_AGE, "Age of the oldest unpublished row")
        age.add_metric([], status["oldest_unpublished_age_seconds"])
        failing = GaugeMetricFamily(FAILING_ROWS, "Unpublished rows that failed at least once")
        failing.add_metric([], status["failing"])
        buckets = GaugeMetricFamily(BUCKETS_HELD, "Hash buckets this relay owns")
        buckets.add_metric([], len(self.relay.leases.held) if self.relay.leases else self.relay.buckets)
        yield from (backlog, age, failing, buckets)


def relay_registry(engine: Engine, relay: OutboxRelay) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(engine, relay))
    for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):  # process_* and python_*, as usual
        registry.register(standard)
    return registry
