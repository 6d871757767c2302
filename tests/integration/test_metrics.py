"""/metrics and /healthz of the consumer and the relay; the numbers match ``ttsync lag --json``."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from tests.pipeline import Pipeline, wait_until
from tests.services import free_port
from tests.timetracker_data import base_rows, new_invoice

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_consumer_metrics_match_ttsync_lag(pipeline: Pipeline) -> None:
    with Session(pipeline.engine) as s:
        user, client, project = base_rows(s)
        for n in range(6):
            new_invoice(s, user, client, project, number=f"INV-M{n}", items=1, status="sent")
        s.commit()
    pipeline.relay()
    pipeline.admin("config", {"latency_ms": 4000})  # the consumer crawls: lag stays put while we look
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ttsync", "consume", "--no-create-topics", "--metrics-port",
                             str(port)], env=pipeline.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _up(port), 30, "the metrics endpoint")
        health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["ready"] is True
        wait_until(lambda: sum(scrape(port).get("kafka_consumergroup_group_lag", {}).values()) > 0, 60,
                   "the group to show lag")
        metrics = scrape(port)
        lag = json.loads(subprocess.run([sys.executable, "-m", "ttsync", "lag", "--json"], env=pipeline.env(),
                                        capture_output=True, text=True, timeout=60).stdout)
        for p in lag["partitions"]:
            # kafka-lag-exporter's labels, exactly; the only replica owns every partition, so exports each.
            key = tuple(sorted({"cluster_name": "default", "group": pipeline.group, "topic": p["topic"],
                                "partition": str(p["partition"]), "member_host": p["member_host"],
                                "consumer_id": p["consumer_id"], "client_id": p["client_id"]}.items()))
            # Without a committed offset the metric holds what is there to read; `lag` shows "-" (null).
            expected = p["lag"] if p["lag"] is not None else p["from_log_start"]
            assert metrics["kafka_consumergroup_group_lag"][key] == expected
            assert abs(metrics["kafka_consumergroup_group_lag_seconds"][key] - p["lag_seconds"]) < 5.0
        wait_until(lambda: "ttsync_qbo_requests_total" in scrape(port), 60, "QBO calls to be counted")
    finally:
        proc.terminate()
        proc.wait(60)


def _up(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code in (200, 503)
    except requests.RequestException:
        return False


def test_relay_metrics_and_health_without_a_broker(pg_engine, pg_database: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from producer.outbox_status import outbox_status
    from producer.outbox_writer import write_event

    with pg_engine.begin() as conn:
        for i in range(5):
            write_event(conn, aggregate_type="client", aggregate_id=str(i), action="updated",
                        payload={"id": i, "name": f"C{i}"}, source="t")
    port = free_port()
    env = {"TTSYNC_DATABASE_URL": pg_database, "TTSYNC_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
           "TTSYNC_LOG_FORMAT": "json"}
    import os

    proc = subprocess.Popen([sys.executable, "-m", "ttsync", "relay", "--no-create-topics", "--metrics-port",
                             str(port)], env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _up(port), 30, "the relay's metrics endpoint")
        health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert health.status_code == 503 and "broker" in health.json()["problems"]
        metrics = scrape(port)
        status = outbox_status(pg_engine)
        assert metrics["ttsync_outbox_backlog"][(("aggregate_type", "client"),)] == status["backlog"] == 5
        age = metrics["ttsync_outbox_oldest_unpublished_age_seconds"][()]
        assert 0 < age < status["oldest_unpublished_age_seconds"] + 30  # the rows written above, seconds ago
        time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(60)
