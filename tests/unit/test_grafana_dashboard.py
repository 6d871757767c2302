"""The Grafana dashboard parses and only uses metrics that ttsync exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from consumer import metrics

ROOT = Path(__file__).resolve().parents[2]

EXPORTED = {
    # consumer counters/histograms (prometheus_client adds _total / _bucket)
    *(f"{m._name}_total" for m in (metrics.EVENTS, metrics.QBO_REQUESTS, metrics.RETRIES, metrics.DEAD_LETTERED,
                                    metrics.THROTTLE_WAIT)),
    f"{metrics.APPLY_SECONDS._name}_bucket",
    # consumer.observability.LagCollector
    "kafka_consumergroup_group_lag", "kafka_consumergroup_group_lag_seconds", "kafka_consumergroup_group_offset",
    # producer.relay_metrics.RelayCollector
    "ttsync_outbox_backlog", "ttsync_outbox_oldest_unpublished_age_seconds", "ttsync_outbox_failing_rows",
    "ttsync_outbox_published_total", "ttsync_outbox_publish_failures_total", "ttsync_relay_buckets_held",
}


def test_dashboard_uses_only_exported_metrics() -> None:
    dash = json.loads((ROOT / "deploy" / "grafana" / "ttsync-dashboard.json").read_text())
    assert dash["panels"] and dash["uid"] == "ttsync-overview"
    used = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\b((?:ttsync|kafka)_[a-z_]+)", target["expr"]))
    assert used and used <= EXPORTED, used - EXPORTED


def test_series_every_replica_exports_are_not_summed_across_replicas() -> None:
    """Every consumer replica exports the group's lag, every relay the outbox backlog: summed directly, two
    replicas showed twice the lag. Such series are taken with max per partition (or type) first."""
    from consumer.observability import LagCollector

    per_replica = (*LagCollector.FAMILIES, "ttsync_outbox_backlog", "ttsync_outbox_oldest_unpublished_age_seconds",
                   "ttsync_outbox_failing_rows")
    dash = json.loads((ROOT / "deploy" / "grafana" / "ttsync-dashboard.json").read_text())
    for panel in dash["panels"]:
        for target in panel["targets"]:
            for name in per_replica:
                assert not re.search(rf"sum(?: by \([^)]*\))? \({name}\b", target["expr"]), target["expr"]


def test_the_standard_process_and_python_series_are_exported() -> None:
    from prometheus_client import generate_latest

    text = generate_latest(metrics.REGISTRY).decode()
    assert "python_info{" in text and "python_gc_objects_collected_total" in text
    assert "process_resident_memory_bytes" in text  # read from /proc: Linux, as everywhere ttsync runs
    assert "ttsync_consumer_lag_messages" not in text  # declared once, never set: gone
