"""Prometheus metrics of the consumer (served on /metrics by ``ttsync consume --metrics-port``)."""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

REGISTRY = CollectorRegistry(auto_describe=True)
# The process_* and python_* series every Prometheus client exports (memory, CPU, open files, GC): a registry of
# our own would otherwise leave them out.
for _standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_standard)

EVENTS = Counter("ttsync_consumer_events_total", "Events handled, by topic and outcome",
                 ["topic", "outcome"], registry=REGISTRY)
QBO_REQUESTS = Counter("ttsync_qbo_requests_total", "QBO API calls, by entity, operation and outcome",
                       ["entity", "operation", "outcome"], registry=REGISTRY)
RETRIES = Counter("ttsync_consumer_retries_total", "Retries, in place or through retry topics", ["kind"],
                  registry=REGISTRY)
DEAD_LETTERED = Counter("ttsync_consumer_dead_lettered_total", "Records sent to the dead-letter topic",
                        ["error_code"], registry=REGISTRY)
THROTTLE_WAIT = Counter("ttsync_qbo_throttle_wait_seconds_total",
                        "Seconds spent waiting for the realm's request budget or a 429's Retry-After",
                        registry=REGISTRY)
APPLY_SECONDS = Histogram("ttsync_consumer_apply_seconds", "Time to apply one event", registry=REGISTRY,
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
OUTAGE = Gauge("ttsync_consumer_outage", "1 while the consumer is paused because record after record fails alike "
               "(a service is down; consumer.outage)", registry=REGISTRY)
BROKER_AWAY = Gauge("ttsync_consumer_broker_away", "1 while an offset commit waits for the Kafka broker to come back "
                    "(the consumer waits in place; records are neither lost nor applied twice)", registry=REGISTRY)
MEMBER_RENEWALS = Counter("ttsync_consumer_member_renewals", "Group members the Kafka client stopped serving (no "
                          "stable group, partitions not fetched), replaced in place by a fresh one", registry=REGISTRY)


def count_qbo_call(entity: str, operation: str, outcome: str) -> None:
    QBO_REQUESTS.labels(entity or "-", operation or "-", outcome).inc()
