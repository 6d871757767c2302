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
    # ops.observability.LagCollector
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
    from ops.observability import LagCollector

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


def test_each_partition_s_lag_is_exported_once_by_the_replica_that_owns_it() -> None:
    """Every replica exported the whole group's lag: two replicas, twice the lag in any sum."""
    from unittest import mock

    from ops.lag import GroupLag, PartitionLag
    from ops.observability import LABELS, LagCollector

    parts = [PartitionLag("t", n, 10, 15, 5, 1.0, f"m{n % 2} /10.0.0.{n % 2}", consumer_id=f"m{n % 2}",
                          member_host=f"/10.0.0.{n % 2}", client_id="ttsync-consumer") for n in range(4)]
    measured = GroupLag("g", "Stable", [{"member_id": "m0"}, {"member_id": "m1"}], parts)
    replicas = [LagCollector("b:9092", "g", owned=lambda n=n: {("t", p) for p in range(4) if p % 2 == n})
                for n in range(2)]
    with mock.patch("ops.observability.measure", return_value=measured):
        exported = [s for r in replicas for fam in r.collect() if fam.name == "kafka_consumergroup_group_lag"
                    for s in fam.samples]
    assert sorted(s.labels["partition"] for s in exported) == ["0", "1", "2", "3"]  # once each
    assert sum(s.value for s in exported) == 20
    assert list(exported[0].labels) == LABELS  # kafka-lag-exporter's label set
