"""The next version of ttsync's relay, for the mixed-versions scenario (#21): what a relay of event contract 1.1
publishes while consumers of 1.0 still run. ``schema_version`` "1.1" in the header and the envelope, plus fields
1.0 does not know: one in the envelope, one in the aggregate's payload (a minor version only adds optional
fields). Every ``MAJOR_EVERY``-th event also goes out a second time as contract 2.0, which no consumer of 1.x may
apply: its aggregate version is far ahead and its note says so, so a consumer that applied it would leave QBO
stale for the invariant to see.

Run as ``python -m tests.chaos.next_version`` with the relay's TTSYNC_* environment: it is ``ttsync relay`` with
this publisher in front of the real one."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from producer.kafka_publisher import RecordPublisher
from schemas.contract import Header
from schemas.kafka_client import OutRecord

NEXT_MINOR = "1.1"
NEXT_MAJOR = "2.0"
MAJOR_EVERY = 25


def _with_version(record: OutRecord, envelope: dict[str, Any], version: str) -> OutRecord:
    headers = [(k, version.encode() if k == Header.SCHEMA_VERSION else v) for k, v in record.headers]
    return OutRecord(record.topic, record.key, json.dumps(envelope).encode(), headers)


def next_minor(record: OutRecord) -> OutRecord:
    envelope = json.loads(record.value or b"{}")
    envelope["schema_version"] = NEXT_MINOR
    envelope["trace_parent"] = f"00-{envelope['event_id'].replace('-', '')}-0000000000000001-01"
    envelope["payload"] = {**envelope["payload"], "external_reference": f"next-{envelope['aggregate_id']}"}
    return _with_version(record, envelope, NEXT_MINOR)


def next_major(record: OutRecord) -> OutRecord:
    """Another event of the same aggregate (an event id of its own), in contract 2.0."""
    envelope = json.loads(record.value or b"{}")
    envelope["schema_version"] = NEXT_MAJOR
    envelope["event_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"ttsync-2.0:{envelope['event_id']}"))
    envelope["aggregate_version"] = int(envelope["aggregate_version"]) + 1_000_000
    envelope["payload"] = {**envelope["payload"], "notes": "contract 2.0: never to be applied by 1.x"}
    upgraded = _with_version(record, envelope, NEXT_MAJOR)
    changed = {Header.EVENT_ID: envelope["event_id"], Header.AGGREGATE_VERSION: str(envelope["aggregate_version"])}
    headers = [(k, changed[k].encode() if k in changed else v) for k, v in upgraded.headers]
    return OutRecord(upgraded.topic, upgraded.key, upgraded.value, headers)


class NextVersionPublisher:
    """A ``RecordPublisher`` that sends what the next version would, through the real one."""

    def __init__(self, inner: RecordPublisher) -> None:
        self.inner = inner
        self.sent = 0

    def send(self, records: Sequence[OutRecord]) -> Any:
        out: list[OutRecord] = []
        per_row: list[int] = []  # records sent for each outbox row, in order
        for record in records:
            out.append(next_minor(record))
            self.sent += 1
            if self.sent % MAJOR_EVERY == 0:
                out.append(next_major(record))
            per_row.append(len(out) - sum(per_row))
        return self.inner.send(out), per_row

    def wait(self, handle: Any) -> list[BaseException | None]:
        """Per outbox row: failed when a record sent for it failed (the relay then publishes it again)."""
        inner, per_row = handle
        results = self.inner.wait(inner)
        out: list[BaseException | None] = []
        i = 0
        for count in per_row:
            errors = [e for e in results[i:i + count] if e is not None]
            out.append(errors[0] if errors else None)
            i += count
        return out

    def close(self) -> None:
        self.inner.close()


def main() -> None:
    from ttsync.cli.base import load_settings
    from ttsync.wiring import build_relay, relay_publisher, stop_on_signals

    settings = load_settings()  # and logging, as every ttsync command
    publisher = NextVersionPublisher(relay_publisher(settings, settings.kafka))
    worker = build_relay(settings, publisher=publisher)
    stop_on_signals(worker.stop, "finishing in-flight batch")
    try:
        worker.run()
    finally:
        publisher.close()


if __name__ == "__main__":
    main()
