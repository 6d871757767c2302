"""Reading topics back in tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from kafka import KafkaConsumer


def read_topics(
    bootstrap: str,
    topics: Iterable[str],
    *,
    until: Callable[[list[Any]], bool] | None = None,
    timeout_s: float = 30.0,
    idle_s: float = 2.0,
) -> list[Any]:
    """All records of ``topics`` from the beginning, stopping when ``until(records)`` holds (or after
    ``idle_s`` without news once nothing more is expected), or at ``timeout_s``."""
    consumer = KafkaConsumer(
        *list(topics),
        bootstrap_servers=bootstrap,
        group_id=f"reader-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        metadata_max_age_ms=1000,
    )
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
                last_new = time.monotonic()
            if until is not None and until(records):
                break
            if until is None and records and time.monotonic() - last_new > idle_s:
                break
    finally:
        consumer.close()
    return records
