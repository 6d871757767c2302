"""``ttsync lag`` over 200 partitions: how long one answer takes (target < 1 s).

    python3 -m benchmarks.lag [--partitions 200] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata

from benchmarks._env import kafka_bootstrap, print_table
from ops.lag import evaluate, measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--partitions", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    bootstrap = kafka_bootstrap()
    topics = [f"lagbench-{uuid.uuid4().hex[:6]}-{i}" for i in range(4)]
    per_topic = args.partitions // len(topics)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(t, per_topic, 1) for t in topics])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for t in topics:
        for p in range(per_topic):
            for i in range(3):
                producer.send(t, value=b"x", partition=p, key=str(i).encode())
    producer.flush()
    producer.close()
    group = f"lagbench-{uuid.uuid4().hex[:6]}"
    committer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    committer.commit({TopicPartition(t, p): OffsetAndMetadata(p % 3, None, -1)
                      for t in topics for p in range(per_topic)})
    committer.close()
    state = Path(tempfile.mkdtemp()) / "window.json"
    times = []
    for _ in range(args.runs):
        started = time.perf_counter()
        result = evaluate(measure(bootstrap, group), path=state)
        times.append(time.perf_counter() - started)
    lagging = sum(1 for p in result.partitions if p.lag)
    rest = sorted(times[1:]) or times
    print_table(f"ttsync lag over {len(result.partitions)} partitions ({lagging} lagging, lag in seconds read "
                "from the broker)", [
        ("first run (cold connections)", f"{times[0] * 1000:.0f} ms"),
        ("best / median of the rest", f"{rest[0] * 1000:.0f} / {rest[len(rest) // 2] * 1000:.0f} ms"),
        ("target", "< 1,000 ms"),
    ])
    if args.json:
        Path(args.json).write_text(json.dumps({"partitions": len(result.partitions), "seconds": times}))


if __name__ == "__main__":
    main()
