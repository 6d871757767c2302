"""The relay's rules, on SQLite with a stub publisher (the Kafka path is in tests/integration)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import Engine, func, select, update

from producer.outbox_relay import OutboxRelay
from producer.outbox_status import outbox_status
from producer.outbox_tables import outbox
from producer.outbox_writer import write_event
from schemas import decode_event
from tests.fakes import StubPublisher


def seed(engine: Engine, rows: list[tuple[str, str]]) -> list[str]:
    ids = []
    with engine.begin() as conn:
        for agg_type, agg_id in rows:
            payload = {"id": int(agg_id), "name": f"Client {agg_id}"} if agg_type == "client" else {"id": 1}
            ids.append(str(write_event(conn, aggregate_type=agg_type, aggregate_id=agg_id, action="updated",
                                       payload=payload, source="test", headers={"trace": "t-1"})))
    return ids


def drain(relay: OutboxRelay) -> int:
    """Run the relay's loop until nothing is due; returns the rows published by this run."""
    before = relay.stats.published
    return relay.run(idle_exit=True).published - before


def test_publishes_in_order_with_key_headers_and_envelope(sqlite_engine: Engine) -> None:
    ids = seed(sqlite_engine, [("client", "1"), ("client", "2"), ("client", "1")])
    stub = StubPublisher()
    relay = OutboxRelay(sqlite_engine, stub, topic_prefix="acme")
    assert drain(relay) == 3
    assert drain(relay) == 0
    assert [r.topic for r in stub.sent] == ["acme.client"] * 3
    assert [r.key for r in stub.sent] == [b"1", b"2", b"1"]
    headers = dict(stub.sent[0].headers)
    assert headers["id"].decode() == ids[0]
    assert headers["eventType"] == b"client.updated"
    assert headers["aggregateVersion"] == b"1"
    assert headers["ttsync.trace"] == b"t-1"
    evt = decode_event(stub.sent[2].value)
    assert str(evt.event_id) == ids[2] and evt.aggregate_version == 2
    with sqlite_engine.connect() as conn:
        assert conn.execute(select(func.count()).where(outbox.c.published_at.is_(None))).scalar_one() == 0


def test_failed_record_holds_back_its_aggregate_only(sqlite_engine: Engine) -> None:
    seed(sqlite_engine, [("client", "1"), ("client", "2"), ("client", "1"), ("client", "2")])
    poisoned = {"value": True}

    def fail_first_of_client_1(rec):  # type: ignore[no-untyped-def]
        evt = json.loads(rec.value)
        if poisoned["value"] and evt["aggregate_id"] == "1":
            return ValueError("MessageSizeTooLarge")
        return None

    stub = StubPublisher(fail_first_of_client_1)
    relay = OutboxRelay(sqlite_engine, stub)
    assert drain(relay) == 2  # client 2's two rows; both client 1 rows failed in this batch
    assert [r.key for r in stub.sent] == [b"2", b"2"]
    status = outbox_status(sqlite_engine)
    assert status["backlog"] == 2 and status["failing"] == 2
    assert status["failing_rows"][0]["last_error"].startswith("ValueError: MessageSizeTooLarge")
    # Not due yet: nothing is claimed, and the later client 1 row never overtakes the earlier one.
    assert drain(relay) == 0
    poisoned["value"] = False
    with sqlite_engine.begin() as conn:
        conn.execute(update(outbox).values(available_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    assert drain(relay) == 2
    assert [json.loads(r.value)["aggregate_version"] for r in stub.sent if r.key == b"1"] == [1, 2]
    assert outbox_status(sqlite_engine)["backlog"] == 0


def test_whole_batch_refused_raises_and_marks_nothing_published(sqlite_engine: Engine) -> None:
    seed(sqlite_engine, [("client", "1"), ("client", "2")])
    relay = OutboxRelay(sqlite_engine, StubPublisher(lambda r: ConnectionError("broker down")))
    stats = relay.run(idle_exit=True)  # the loop backs off; the refused rows are not due again yet: it ends
    assert stats.published == 0 and stats.failed == 2
    status = outbox_status(sqlite_engine)
    assert status["backlog"] == 2 and status["failing"] == 2


def test_purge_deletes_only_old_published_rows(sqlite_engine: Engine) -> None:
    seed(sqlite_engine, [("client", str(i)) for i in range(5)])
    relay = OutboxRelay(sqlite_engine, StubPublisher(), retention=dt.timedelta(hours=1))
    assert drain(relay) == 5
    seed(sqlite_engine, [("client", "9")])  # unpublished: must stay
    with sqlite_engine.begin() as conn:
        old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
        first_three = select(outbox.c.id).order_by(outbox.c.seq).limit(3).scalar_subquery()
        conn.execute(update(outbox).where(outbox.c.id.in_(first_three)).values(published_at=old))
    assert relay.purge() == 3
    with sqlite_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(outbox)).scalar_one() == 3


def test_run_loop_drains_and_exits_when_idle(sqlite_engine: Engine) -> None:
    seed(sqlite_engine, [("client", str(i)) for i in range(1200)])
    stub = StubPublisher()
    stats = OutboxRelay(sqlite_engine, stub, batch_size=500).run(idle_exit=True)
    assert stats.published == 1200 and stats.batches == 3
    assert len({dict(r.headers)["id"] for r in stub.sent}) == 1200


def test_outbox_status_reports_backlog_age_and_rate(sqlite_engine: Engine) -> None:
    seed(sqlite_engine, [("client", "1"), ("invoice", "1"), ("invoice", "2")])
    with sqlite_engine.begin() as conn:
        conn.execute(update(outbox).values(occurred_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=90)))
    status = outbox_status(sqlite_engine)
    assert status["backlog"] == 3
    assert status["backlog_by_type"] == {"client": 1, "invoice": 2}
    assert 89 <= status["oldest_unpublished_age_seconds"] <= 120
    OutboxRelay(sqlite_engine, StubPublisher()).run(idle_exit=True)
    status = outbox_status(sqlite_engine)
    assert status["backlog"] == 0 and status["published_retained"] == 3
    assert status["publish_rate_per_second"] == pytest.approx(3 / 300)


def test_the_origin_of_a_change_travels_as_a_header(sqlite_engine: Engine) -> None:
    """The importer's changes are marked at capture; the relay carries the mark to the export consumer."""
    with sqlite_engine.begin() as conn:
        write_event(conn, aggregate_type="invoice", aggregate_id="1", action="updated", payload={"id": 1},
                    source="test", origin="qbo-import")
        write_event(conn, aggregate_type="invoice", aggregate_id="2", action="updated", payload={"id": 2},
                    source="test")
    stub = StubPublisher()
    OutboxRelay(sqlite_engine, stub).run(idle_exit=True)
    assert [dict(r.headers).get("ttsync.origin") for r in stub.sent] == [b"qbo-import", None]
