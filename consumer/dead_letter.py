"""Records forwarded to a retry topic or the dead-letter topic: the original key, value and headers, plus
context headers in the spirit of Kafka Connect's ``__connect.errors.*`` and Spring's ``kafka_dlt-*``."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from consumer.errors import QboValidationFault, SyncError
from schemas.contract import RETRY_SUFFIX, Header

_RETRY_TOPIC = re.compile(rf"^(?P<base>.+){re.escape(RETRY_SUFFIX)}\.(?P<delay>\d+)s$")


@dataclass(frozen=True)
class OutgoingRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def retry_tier(topic: str, delays: tuple[int, ...]) -> int | None:
    m = _RETRY_TOPIC.match(topic)
    if not m:
        return None
    delay = int(m.group("delay"))
    return delays.index(delay) if delay in delays else len(delays) - 1


def base_topic(topic: str) -> str:
    m = _RETRY_TOPIC.match(topic)
    return m.group("base") if m else topic


def _iso(ts: dt.datetime) -> str:
    return ts.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def error_headers(error: BaseException) -> dict[str, str]:
    out = {
        Header.ERROR_CLASS: f"{type(error).__module__}.{type(error).__name__}",
        Header.ERROR_MESSAGE: str(error)[:4000],
        Header.ERROR_CODE: getattr(error, "code", "") or type(error).__name__,
    }
    if isinstance(error, QboValidationFault):
        out[Header.QBO_FAULT_CODE] = error.code
        out[Header.QBO_FAULT_BODY] = error.body[:8000]
    elif isinstance(error, SyncError) and isinstance(error.detail, str) and error.detail.startswith("{"):
        out[Header.QBO_FAULT_BODY] = error.detail[:8000]
    return out


def forward(record: Any, *, target_topic: str, error: BaseException, group_id: str, attempts_here: int,
            due_at: dt.datetime | None = None, now: dt.datetime | None = None) -> OutgoingRecord:
    """The record as it goes to ``target_topic``. Original-topic headers are set once, at the first failure,
    so a record that went through the retry tiers still names where it came from."""
    now = now or dt.datetime.now(dt.UTC)
    headers: dict[str, str] = {}
    passthrough: list[tuple[str, bytes]] = []
    for name, value in record.headers or []:
        if name.startswith(Header.PREFIX):
            headers[name] = (value or b"").decode("utf-8", "replace")
        else:
            passthrough.append((name, value or b""))
    previous_attempts = int(headers.get(Header.ATTEMPTS, "0") or 0)
    if Header.ORIGINAL_TOPIC not in headers:
        headers[Header.ORIGINAL_TOPIC] = base_topic(record.topic)
        headers[Header.ORIGINAL_PARTITION] = str(record.partition)
        headers[Header.ORIGINAL_OFFSET] = str(record.offset)
        headers[Header.ORIGINAL_TIMESTAMP] = str(record.timestamp)
        headers[Header.FIRST_FAILURE] = _iso(now)
    headers.pop(Header.QBO_FAULT_CODE, None)
    headers.pop(Header.QBO_FAULT_BODY, None)
    headers.pop(Header.RETRY_DUE_AT, None)
    headers.update(error_headers(error))
    headers[Header.CONSUMER_GROUP] = group_id
    headers[Header.ATTEMPTS] = str(previous_attempts + attempts_here)
    headers[Header.LAST_FAILURE] = _iso(now)
    if due_at is not None:
        headers[Header.RETRY_DUE_AT] = _iso(due_at)
    return OutgoingRecord(target_topic, record.key, record.value,
                          passthrough + [(k, v.encode()) for k, v in headers.items()])


def due_at(record: Any) -> dt.datetime | None:
    for name, value in record.headers or []:
        if name == Header.RETRY_DUE_AT and value:
            return dt.datetime.fromisoformat(value.decode().replace("Z", "+00:00"))
    return None


def failing_for_s(record: Any, now: dt.datetime | None = None) -> float:
    """Seconds since the record first failed (0 for a record that never did)."""
    for name, value in record.headers or []:
        if name == Header.FIRST_FAILURE and value:
            first = dt.datetime.fromisoformat(value.decode().replace("Z", "+00:00"))
            return max(0.0, ((now or dt.datetime.now(dt.UTC)) - first).total_seconds())
    return 0.0
