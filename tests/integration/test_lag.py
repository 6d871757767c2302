"""``ttsync lag`` against a real broker: exact lag, lag in seconds, and the scripted statuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata

from ops.lag import GroupNotFound, evaluate, judge, measure

pytestmark = pytest.mark.integration


def topic_with(bootstrap: str, partitions: int) -> str:
    name = f"lag-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(name, partitions, 1)])
    admin.close()
    return name


def produce(bootstrap: str, topic: str, partition: int, n: int, timestamp_ms: int | None = None) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(n):
        producer.send(topic, value=f"v{i}".encode(), partition=partition, timestamp_ms=timestamp_ms)
    producer.flush()
    producer.close()


def commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    consumer.commit({tp: OffsetAndMetadata(o, None, -1) for tp, o in offsets.items()})
    consumer.close()


def test_lag_in_messages_is_produced_minus_committed(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = topic_with(kafka_bootstrap, 2)
    produce(kafka_bootstrap, topic, 0, 10)
    produce(kafka_bootstrap, topic, 1, 7)
    group = f"g-{uuid.uuid4().hex[:6]}"
    commit(kafka_bootstrap, group, {TopicPartition(topic, 0): 4, TopicPartition(topic, 1): 7})
    result = evaluate(measure(kafka_bootstrap, group), path=tmp_path / "w.json")
    by_partition = {p.partition: p for p in result.partitions}
    assert (by_partition[0].committed, by_partition[0].log_end, by_partition[0].lag) == (4, 10, 6)
    assert (by_partition[1].committed, by_partition[1].lag, by_partition[1].lag_seconds) == (7, 0, 0.0)
    assert result.totals()[topic]["lag"] == 6


def test_lag_in_seconds_is_the_age_of_the_oldest_unconsumed_record(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = topic_with(kafka_bootstrap, 1)
    produce(kafka_bootstrap, topic, 0, 3, timestamp_ms=int(time.time() * 1000) - 60_000)  # consumed
    produce(kafka_bootstrap, topic, 0, 2, timestamp_ms=int(time.time() * 1000) - 30_000)  # not yet
    group = f"g-{uuid.uuid4().hex[:6]}"
    commit(kafka_bootstrap, group, {TopicPartition(topic, 0): 3})
    part = measure(kafka_bootstrap, group).partitions[0]
    assert part.lag == 2
    assert abs(part.lag_seconds - 30) < 1.0


def test_err_at_once_when_the_group_has_no_members_and_lag(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A dead group with lag 80 was reported OK (and `--check` exit 0) run after run."""
    topic = topic_with(kafka_bootstrap, 1)
    produce(kafka_bootstrap, topic, 0, 5)
    group = f"g-{uuid.uuid4().hex[:6]}"
    commit(kafka_bootstrap, group, {TopicPartition(topic, 0): 2})
    result = evaluate(measure(kafka_bootstrap, group), path=tmp_path / "w.json")
    assert result.status == "ERR" and "no active members" in result.message


def _live_member(bootstrap: str, topic: str, group: str) -> KafkaConsumer:
    member = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                           auto_offset_reset="earliest")
    deadline = time.time() + 20
    while not member.assignment() and time.time() < deadline:
        member.poll(timeout_ms=200)
    return member


def test_stop_when_a_live_member_does_not_commit_for_longer_than_the_threshold(kafka_bootstrap: str,
                                                                             tmp_path: Path) -> None:
    topic = topic_with(kafka_bootstrap, 1)
    produce(kafka_bootstrap, topic, 0, 5)
    group = f"g-{uuid.uuid4().hex[:6]}"
    member = _live_member(kafka_bootstrap, topic, group)
    try:
        member.commit({TopicPartition(topic, 0): OffsetAndMetadata(1, None, -1)})
        first = evaluate(measure(kafka_bootstrap, group), path=tmp_path / "w.json", stop_after_s=1.0)
        time.sleep(1.5)  # time, not the number of runs, makes a STOP
        later = evaluate(measure(kafka_bootstrap, group), path=tmp_path / "w.json", stop_after_s=1.0)
    finally:
        member.close()
    assert first.status == "OK" and later.status == "STOP" and "has not moved" in later.message
    assert later.partitions[0].member is not None and len(later.members) == 1


def _statuses_over(bootstrap: str, path: Path, start: int, steps: list[tuple[int, int]]) -> list[str]:
    """A live member of a fresh group on a fresh topic of ``start`` records: per step it commits an offset, the
    producer adds records, and the status is sampled."""
    topic = topic_with(bootstrap, 1)
    group = f"g-{uuid.uuid4().hex[:6]}"
    tp = TopicPartition(topic, 0)
    produce(bootstrap, topic, 0, start)
    member = _live_member(bootstrap, topic, group)
    try:
        statuses = []
        for committed, more in steps:
            member.commit({tp: OffsetAndMetadata(committed, None, -1)})
            produce(bootstrap, topic, 0, more)
            statuses.append(evaluate(measure(bootstrap, group), path=path).status)
    finally:
        member.close()
    return statuses


def test_stall_when_commits_move_but_lag_never_shrinks(kafka_bootstrap: str, tmp_path: Path) -> None:
    # the consumer moves by 1, the producer adds 5: lag grows every sample
    statuses = _statuses_over(kafka_bootstrap, tmp_path / "w.json", 5, [(n + 1, 5) for n in range(4)])
    assert statuses[-1] == "STALL"


def test_warn_when_lag_grows_though_it_shrank_at_times(kafka_bootstrap: str, tmp_path: Path) -> None:
    statuses = _statuses_over(kafka_bootstrap, tmp_path / "w.json", 10, [(5, 0), (8, 0), (9, 20)])  # lag 5, 2, 21
    assert statuses == ["OK", "OK", "WARN"]


def test_rewind_when_a_committed_offset_goes_back(kafka_bootstrap: str, tmp_path: Path) -> None:
    statuses = _statuses_over(kafka_bootstrap, tmp_path / "w.json", 10, [(6, 0), (2, 0)])
    assert statuses[-1] == "REWIND"


def test_rules_without_a_broker() -> None:
    assert judge([[5, 0]], alive=True) == "OK"
    assert judge([[5, 3]], alive=False) == "ERR"  # one sample is enough to see nobody consumes
    assert judge([[5, 3], [5, 3]], alive=True, still_for_s=10, stop_after_s=300) == "OK"
    assert judge([[5, 3], [5, 3]], alive=True, still_for_s=301, stop_after_s=300) == "STOP"
    assert judge([[5, 3], [4, 4]], alive=True) == "REWIND"
    assert judge([[1, 3], [2, 5], [3, 8]], alive=True) == "STALL"
    assert judge([[1, 3], [2, 5], [3, 5]], alive=True) == "STALL"  # flat lag while committing
    assert judge([[1, 6], [5, 2], [6, 9]], alive=True) == "WARN"
    assert judge([[1, 3], [2, 5], [9, 0]], alive=True) == "OK"


def test_a_sample_file_of_an_earlier_version_is_read(tmp_path: Path) -> None:
    from ops.lag import GroupLag, PartitionLag

    path = tmp_path / "w.json"
    path.write_text(json.dumps([{"ts": 1.0, "p": {"t:0": [3, 2]}}]))  # the old list of samples
    part = PartitionLag("t", 0, 3, 5, 2, 1.0, "m")
    result = evaluate(GroupLag("g", "Stable", [{"member_id": "m"}], [part]), path=path)
    assert result.window_samples == 2


def test_missing_group_and_cli(kafka_bootstrap: str, tmp_path: Path) -> None:
    with pytest.raises(GroupNotFound):
        measure(kafka_bootstrap, f"nobody-{uuid.uuid4().hex[:6]}")
    topic = topic_with(kafka_bootstrap, 1)
    produce(kafka_bootstrap, topic, 0, 4)
    group = f"g-{uuid.uuid4().hex[:6]}"
    commit(kafka_bootstrap, group, {TopicPartition(topic, 0): 1})
    env = {**os.environ, "TTSYNC_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TTSYNC_LAG_STATE_DIR": str(tmp_path)}
    run = [sys.executable, "-m", "ttsync", "lag", "--group", group]
    out = subprocess.run([*run, "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["total_lag"] == 3 and data["partitions"][0]["committed"] == 1
    check = subprocess.run([*run, "--check"], env=env, capture_output=True, text=True, timeout=60)
    assert check.returncode == 1 and "ERR" in check.stdout and "no active members" in check.stdout
    missing = subprocess.run([sys.executable, "-m", "ttsync", "lag", "--group", "nobody-at-all"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_a_partition_without_a_committed_offset_shows_no_lag_and_says_why(kafka_bootstrap: str,
                                                                          tmp_path: Path) -> None:
    """As Kafka's own tool: "-", not lag counted from the start of the log; the owner names member and host."""
    topic = topic_with(kafka_bootstrap, 2)
    produce(kafka_bootstrap, topic, 0, 4)
    produce(kafka_bootstrap, topic, 1, 6)
    group = f"g-{uuid.uuid4().hex[:6]}"
    member = _live_member(kafka_bootstrap, topic, group)
    try:
        member.commit({TopicPartition(topic, 0): OffsetAndMetadata(1, None, -1)})
        result = evaluate(measure(kafka_bootstrap, group), path=tmp_path / "w.json")
    finally:
        member.close()
    by_partition = {p.partition: p for p in result.partitions}
    assert (by_partition[0].committed, by_partition[0].lag) == (1, 3)
    assert (by_partition[1].committed, by_partition[1].lag, by_partition[1].from_log_start) == (None, None, 6)
    owner = by_partition[0].member or ""
    assert owner.startswith("kafka-python") and "127.0.0.1" in owner  # member id, then host
    assert result.to_json()["total_lag"] == 3
