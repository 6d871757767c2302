"""``ttsync dlq list|show|replay`` against the real pipeline."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from sqlalchemy.orm import Session

from schemas import topic_for
from tests.kafka_helpers import topic_configs
from tests.pipeline import Pipeline
from tests.timetracker_data import base_rows, new_expense

pytestmark = pytest.mark.integration


def cli(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ttsync", *args], env=pipeline.env(), capture_output=True,
                          text=True, timeout=120)


def end_offset(pipeline: Pipeline, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=pipeline.bootstrap)
    tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
    total = sum(consumer.end_offsets(tps).values())
    consumer.close()
    return total


def test_list_show_dry_run_and_replay_after_the_fix(pipeline: Pipeline) -> None:
    with Session(pipeline.engine) as s:
        user, _, _ = base_rows(s)
        new_expense(s, user, category="Equipment Rental", status="approved")
        s.commit()
    pipeline.relay()
    producer = KafkaProducer(bootstrap_servers=pipeline.bootstrap)
    producer.send(topic_for("invoice", pipeline.prefix), key=b"77", value=b"\xff\xfe not json").get(10)
    producer.close()
    pipeline.consume_until(lambda st: st.dead_lettered >= 2)

    listed = cli(pipeline, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert data["count"] == 2 and data["by_reason"] == {"missing_account": 1, "malformed_event": 1}
    only = json.loads(cli(pipeline, "dlq", "list", "--json", "--error", "missing_account").stdout)
    assert only["count"] == 1 and only["records"][0]["event_type"] == "expense.created"
    ref = only["records"][0]["ref"]

    shown = json.loads(cli(pipeline, "dlq", "show", ref, "--json").stdout)
    assert shown["value"]["payload"]["category"] == "Equipment Rental"
    assert shown["headers"]["ttsync.errors.class.name"] == "consumer.errors.MissingMapping"
    # Kafka Connect's names too, for Kafka UIs that decode Connect dead-letter queues.
    assert shown["headers"]["__connect.errors.topic"] == topic_for("expense", pipeline.prefix)
    assert shown["headers"]["__connect.errors.exception.class.name"] == "consumer.errors.MissingMapping"
    assert cli(pipeline, "dlq", "show", "0:99999").returncode == 1

    expense_topic = topic_for("expense", pipeline.prefix)
    before = end_offset(pipeline, expense_topic)
    dry = json.loads(cli(pipeline, "dlq", "replay", "--error", "missing_account", "--dry-run", "--json").stdout)
    assert dry["replayed"] == 1 and dry["dry_run"] is True
    assert end_offset(pipeline, expense_topic) == before  # a dry run changes nothing

    assert cli(pipeline, "map", "set", "expense-account", "equipment rental", "Office Supplies").returncode == 0
    # A mistyped filter replays nothing, and must not move the saved position past what it skipped.
    typo = json.loads(cli(pipeline, "dlq", "replay", "--error", "missing_acount", "--json").stdout)
    assert typo["replayed"] == 0 and typo["considered"] == 2
    first = json.loads(cli(pipeline, "dlq", "replay", "--error", "missing_account", "--json").stdout)
    assert first["replayed"] == 1
    pipeline.consume_until(lambda st: st.applied >= 1)
    assert len(pipeline.qbo("Purchase")) == 1
    # A replayed-and-applied dead letter is resolved; the malformed one is still open, and --check says so.
    states = json.loads(cli(pipeline, "dlq", "list", "--json").stdout)
    assert {r["error_code"]: r["state"] for r in states["records"]} == {"missing_account": "resolved",
                                                                         "malformed_event": "open"}
    assert states["by_state"] == {"open": 1, "replayed": 0, "resolved": 1}
    assert cli(pipeline, "dlq", "list", "--check").returncode == 1
    only_open = json.loads(cli(pipeline, "dlq", "list", "--json", "--state", "open", "--limit", "5").stdout)
    assert [r["error_code"] for r in only_open["records"]] == ["malformed_event"]
    everything = json.loads(cli(pipeline, "dlq", "replay", "--json").stdout)  # unfiltered: the position moves
    assert everything["replayed"] == everything["considered"] >= 1
    rest = json.loads(cli(pipeline, "dlq", "replay", "--json").stdout)
    assert rest["replayed"] == 0 and rest["considered"] == 0  # resumed after its own position

    writes = pipeline.writes_per_requestid()
    twice = json.loads(cli(pipeline, "dlq", "replay", "--error", "missing_account", "--from-beginning",
                           "--json").stdout)
    assert twice["replayed"] == 1
    pipeline.consume_until(lambda st: st.duplicates >= 1)
    assert len(pipeline.qbo("Purchase")) == 1 and pipeline.writes_per_requestid() == writes  # nothing new
    replayed = [r for r in json.loads(cli(pipeline, "dlq", "list", "--json").stdout)["records"]]
    # The DLQ itself is kept as an audit trail; the malformed record, replayed unfiltered, came back once more.
    assert len(replayed) == 3


def test_the_dead_letter_topic_keeps_its_records_longer_than_the_brokers_default(pipeline: Pipeline) -> None:
    from schemas import dlq_topic

    retention = topic_configs(pipeline.bootstrap, dlq_topic(pipeline.prefix))["retention.ms"]
    assert retention["value"] == str(365 * 86_400_000)  # not the broker's 7 days
    assert retention["config_source"] == "DYNAMIC_TOPIC_CONFIG"
