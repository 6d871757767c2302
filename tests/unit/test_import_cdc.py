"""The CDC poller on the in-memory QBO and a SQLite state store: what changed is written once the broker has it,
the cursor moves on QBO's clock with an overlap, an outage longer than QBO's 30-day window is said, not hidden."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pytest

from importer.cdc_poller import CdcPoller
from importer.notifications import Change
from schemas.kafka_client import OutRecord
from tests.consumer_harness import REALM, FakeParts


class Broker:
    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.down = False

    def publish(self, records: Sequence[OutRecord]) -> list[BaseException | None]:
        if self.down:
            return [TimeoutError("no acknowledgement")] * len(records)
        self.changes += [Change.decode(r.value) for r in records]
        return [None] * len(records)


def test_changes_are_written_and_the_cursor_moves_only_after_the_broker_has_them(parts: FakeParts) -> None:
    broker = Broker()
    poller = CdcPoller(parts.qbo, parts.engine, REALM, broker.publish, "t.qbo.changes")
    customer = parts.qbo.create("Customer", {"DisplayName": "Acme"}, "c-1")
    assert poller.poll_once() == 1 and broker.changes[0].entity_id == customer["Id"]
    first = poller.cursor()
    assert first is not None
    item = parts.qbo.query("SELECT * FROM Item WHERE Name = 'Services'", "Item")[0]["Id"]
    parts.qbo.delete("Invoice", parts.qbo.create("Invoice", {
        "CustomerRef": {"value": customer["Id"]}, "Line": [{"DetailType": "SalesItemLineDetail", "Amount": 5,
        "SalesItemLineDetail": {"ItemRef": {"value": item}}}]}, "i-1")["Id"], "0", "d-1")
    broker.down = True
    with pytest.raises(TimeoutError):
        poller.poll_once()
    assert poller.cursor() == first  # nothing lost: the next poll asks from the same point
    broker.down = False
    poller.poll_once()
    seen = {(c.entity, c.operation) for c in broker.changes}
    assert ("Invoice", "Delete") in seen and ("Customer", "Update") in seen  # the overlap reads some twice
    assert all(c.source == "cdc" for c in broker.changes)


def test_an_outage_longer_than_qbos_window_is_said_and_polling_goes_on(parts: FakeParts) -> None:
    broker = Broker()
    poller = CdcPoller(parts.qbo, parts.engine, REALM, broker.publish, "t.qbo.changes")
    poller._move_cursor(dt.datetime.now(dt.UTC) - dt.timedelta(days=45), dt.datetime.now(dt.UTC))
    poller.poll_once()  # the sandbox, like QBO, refuses a changedSince older than 30 days: it was not asked for
    assert poller.stats["gaps"] == 1
    cursor = poller.cursor()
    assert cursor is not None and dt.datetime.now(dt.UTC) - cursor < dt.timedelta(minutes=10)


def test_a_webhook_wakes_the_poller_before_its_interval(parts: FakeParts) -> None:
    import threading
    import time

    from importer.consumer import ImportHandler
    from tests.fakes import StubRecord

    broker = Broker()
    poller = CdcPoller(parts.qbo, parts.engine, REALM, broker.publish, "t.qbo.changes")
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop, 3600.0), daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while poller.stats["polls"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    handler = ImportHandler({}, REALM, on_webhook=poller.wake)
    hint = Change(REALM, "Payment", "1", "Create", "", "webhook")
    handler(StubRecord("t.qbo.changes", 0, 0, hint.key, hint.encode(), [], 0), None)
    while poller.stats["polls"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    poller.wake()
    thread.join(5)
    assert poller.stats["polls"] == 2 and not thread.is_alive()  # woken long before its hour was up


def test_an_applied_change_is_noted_under_its_record_id_for_dlq_list(parts: FakeParts) -> None:
    """``ttsync dlq list`` knew no import dead letter as resolved: change records had no id, and the importer
    noted nothing it applied. Each record now carries an id, and the import group's processed changes hold it."""
    from consumer.writes import Outcome, Result
    from importer.consumer import ImportHandler
    from schemas.codec import headers_to_dict
    from schemas.contract import IMPORT_GROUP_SUFFIX, Header
    from tests.fakes import StubRecord

    group = parts.store.group + IMPORT_GROUP_SUFFIX

    class Applies:
        def apply(self, change: Change) -> Outcome:
            return Outcome(Result.UPDATED, change.entity_id)

    def noted(event_id: str, change: Change, outcome: Outcome) -> None:
        parts.store.record_processed(group, event_id, f"qbo.{change.entity}".lower(), change.entity_id,
                                     outcome.result.value)

    change = Change(REALM, "Customer", "58", "Update", "", "cdc")
    out = change.record("t.qbo.changes")
    event_id = headers_to_dict(out.headers)[Header.EVENT_ID]
    assert event_id != headers_to_dict(change.record("t.qbo.changes").headers)[Header.EVENT_ID]  # one per record
    handler = ImportHandler({"Customer": Applies()}, REALM, on_applied=noted)
    assert parts.store.processed_among([event_id], also_groups=(group,)) == set()
    handler(StubRecord(out.topic, 0, 0, out.key, out.value, list(out.headers), 0), None)
    assert parts.store.processed_among([event_id]) == set()  # the export group's: not its record
    assert parts.store.processed_among([event_id], also_groups=(group,)) == {event_id}
