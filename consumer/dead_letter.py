"""Where a record is dead-lettered, or forwarded to a retry topic: ``Forwarder`` sends it, ``forward`` builds it
(the original key, value and headers, plus context headers in the spirit of Kafka Connect's
``__connect.errors.*`` and Spring's ``kafka_dlt-*``); the helpers below read those headers back."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import structlog

from consumer import metrics
from consumer.errors import MalformedEvent, QboValidationFault, StopRequested, SyncError
from schemas.backoff import Backoff
from schemas.contract import Header, parse_retry_topic, retry_topic
from schemas.kafka_client import OutRecord

log = structlog.get_logger("ttsync.consumer")


def retry_tier(topic: str, delays: tuple[int, ...]) -> int | None:
    parsed = parse_retry_topic(topic)
    if parsed is None:
        return None
    delay = parsed[1]
    return delays.index(delay) if delay in delays else len(delays) - 1


def base_topic(topic: str) -> str:
    parsed = parse_retry_topic(topic)
    return parsed[0] if parsed else topic


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
            due_at: dt.datetime | None = None, now: dt.datetime | None = None) -> OutRecord:
    """The record as it goes to ``target_topic``. Original-topic headers are set once, at the first failure,
    so a record that went through the retry tiers still names where it came from."""
    now = now or dt.datetime.now(dt.UTC)
    headers: dict[str, str] = {}
    passthrough: list[tuple[str, bytes]] = []
    for name, value in record.headers or []:
        if name.startswith(Header.PREFIX):
            headers[name] = (value or b"").decode("utf-8", "replace")
        elif not name.startswith(Header.CONNECT_PREFIX):  # written afresh below, from ours
            passthrough.append((name, value or b""))
    previous_attempts = _count(headers.get(Header.ATTEMPTS)) or 0
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
    connect = [(alias, headers[ours]) for ours, alias in Header.CONNECT_ALIASES.items() if ours in headers]
    return OutRecord(target_topic, record.key, record.value,
                          passthrough + [(k, v.encode()) for k, v in [*headers.items(), *connect]])


class Forwarder:
    """Sends failed records on, and waits for the broker's acknowledgement: the caller commits the record's offset
    only after it. A broker that does not acknowledge is waited for (with backoff) until ``stopping`` says stop."""

    def __init__(self, send: Callable[[OutRecord], None], *, group_id: str, dlq: str,
                 retry_delays_s: tuple[int, ...], stopping: Callable[[float], bool]) -> None:
        self.send = send
        self.group_id = group_id
        self.dlq = dlq
        self.retry_delays_s = retry_delays_s
        self.stopping = stopping  # waits up to the given seconds; True when the consumer is stopping

    def to_retry_topic(self, record: Any, error: BaseException, *, attempts: int, tier: int, delay_s: float) -> None:
        now = dt.datetime.now(dt.UTC)
        target = retry_topic(base_topic(record.topic), self.retry_delays_s[tier])
        self._deliver(forward(record, target_topic=target, error=error, group_id=self.group_id,
                              attempts_here=attempts, due_at=now + dt.timedelta(seconds=delay_s), now=now))
        metrics.RETRIES.labels("retry_topic").inc()
        metrics.EVENTS.labels(base_topic(record.topic), "retry_topic").inc()

    def to_dead_letter(self, record: Any, error: BaseException, *, attempts: int, reason: str) -> None:
        self._deliver(forward(record, target_topic=self.dlq, error=error, group_id=self.group_id,
                              attempts_here=attempts))
        metrics.DEAD_LETTERED.labels(getattr(error, "code", type(error).__name__)).inc()
        metrics.EVENTS.labels(base_topic(record.topic), "dead_lettered").inc()
        log.error("event_dead_lettered", topic=record.topic, partition=record.partition, offset=record.offset,
                  error=type(error).__name__, reason=reason[:500])

    def _deliver(self, out: OutRecord) -> None:
        backoff = Backoff(base_s=0.5, max_s=10.0)
        while True:
            try:
                self.send(out)
                return
            except Exception as exc:
                delay = backoff.next()
                log.error("forward_failed", topic=out.topic, error=repr(exc), retry_in_s=round(delay, 2))
                if self.stopping(delay):
                    raise StopRequested("stopping before the forward was acknowledged") from exc


# The headers the consumer reads back from a record of any of its topics (a forged or damaged one included).
_TIMES = (Header.RETRY_DUE_AT, Header.FIRST_FAILURE, Header.LAST_FAILURE)
_COUNTS = (Header.ATTEMPTS, Header.REPLAY_COUNT)


def _header(record: Any, name: str) -> str | None:
    for key, value in record.headers or []:
        if key == name and value:
            try:
                return bytes(value).decode()
            except (UnicodeDecodeError, TypeError):
                return None
    return None


def _time(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _count(text: str | None) -> int | None:
    return int(text) if text is not None and text.isascii() and text.isdigit() and len(text) < 10 else None


def check_headers(record: Any) -> None:
    """A record whose ttsync headers are not what ttsync writes is poison: ``MalformedEvent`` (dead-lettered
    with the header named), never an exception that stops the consumer."""
    for key, value in record.headers or []:
        if not isinstance(key, str) or not (key.startswith(Header.PREFIX) or key in _COUNTS):
            continue
        try:
            text = bytes(value or b"").decode()
        except (UnicodeDecodeError, TypeError):
            raise MalformedEvent(f"header {key!r} is not UTF-8", code="malformed_header") from None
        if key in _TIMES and text and _time(text) is None:
            raise MalformedEvent(f"header {key!r} is not an ISO 8601 time: {text[:60]!r}", code="malformed_header")
        if key in _COUNTS and text and _count(text) is None:
            raise MalformedEvent(f"header {key!r} is not a count: {text[:60]!r}", code="malformed_header")


def due_at(record: Any) -> dt.datetime | None:
    """When a retry-topic record is due; None (due now) when it has no readable due time: ``check_headers``
    then dead-letters a malformed one."""
    return _time(_header(record, Header.RETRY_DUE_AT))


def failing_for_s(record: Any, now: dt.datetime | None = None) -> float:
    """Seconds since the record first failed (0 for a record that never did, or whose header is unreadable)."""
    first = _time(_header(record, Header.FIRST_FAILURE))
    if first is None:
        return 0.0
    return max(0.0, ((now or dt.datetime.now(dt.UTC)) - first).total_seconds())


def replay_count(record: Any) -> int:
    return _count(_header(record, Header.REPLAY_COUNT)) or 0


def attempt_count(record: Any) -> int:
    """How many times the record failed before this delivery (0 for a first delivery, or an unreadable count)."""
    return _count(_header(record, Header.ATTEMPTS)) or 0
