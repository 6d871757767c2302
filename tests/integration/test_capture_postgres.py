"""Trigger capture on a real PostgreSQL, and its equality with the SQLAlchemy capture."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from producer.outbox_tables import outbox
from producer.session_capture import install_session_capture
from producer.timetracker_schema import InvoiceItem
from producer.trigger_capture import install_triggers, installed_triggers, uninstall_triggers
from tests.capture_scenario import EXPECTED, outbox_events, per_aggregate, play
from tests.conftest import prepare_timetracker_db
from tests.timetracker_data import base_rows, new_invoice

pytestmark = pytest.mark.integration


def _triples(events: list[dict]) -> list[tuple[str, str, int]]:
    return [(e["event_type"], e["aggregate_id"], e["aggregate_version"]) for e in events]


def _canonical(events: list[dict]) -> list[dict]:
    return sorted(events, key=lambda e: (e["event_type"].split(".")[0], e["aggregate_id"], e["aggregate_version"]))


def test_triggers_capture_the_scenario(pg_engine: Engine) -> None:
    with pg_engine.begin() as conn:
        install_triggers(conn, source="tt-test")
    play(sessionmaker(pg_engine))
    events = outbox_events(pg_engine)
    assert per_aggregate(_triples(events)) == per_aggregate(EXPECTED)
    created = next(e for e in events if e["event_type"] == "invoice.created")["state"]
    assert [i["description"] for i in created["items"]] == ["Consulting hours 1", "Consulting hours 2"]
    assert created["total_amount"] == "249.15"
    deleted = next(e for e in events if e["event_type"] == "expense.deleted")["state"]
    assert deleted["status"] == "approved"
    with pg_engine.connect() as conn:
        source = conn.execute(text("SELECT payload->>'source' FROM ttsync_outbox LIMIT 1")).scalar()
        pending = conn.execute(text("SELECT count(*) FROM ttsync_capture_pending")).scalar_one()
    assert source == "tt-test"
    assert pending == 0


def test_trigger_and_sqlalchemy_capture_give_equal_events(pg_engine: Engine, pg_database: str,
                                                          pg_server_url: str, tmp_path) -> None:
    with pg_engine.begin() as conn:
        install_triggers(conn)
    play(sessionmaker(pg_engine))
    by_trigger = _canonical(outbox_events(pg_engine))

    # Same scenario, SQLAlchemy capture, on a second PostgreSQL database and on SQLite.
    from producer.database import scratch_database

    with scratch_database(pg_server_url, "t_orm_") as other:
        orm_engine = prepare_timetracker_db(other)
        factory = sessionmaker(orm_engine)
        install_session_capture(factory)
        play(factory)
        by_session_pg = _canonical(outbox_events(orm_engine))
        orm_engine.dispose()

    sqlite_engine = prepare_timetracker_db(f"sqlite:///{tmp_path / 'orm.sqlite3'}")
    factory = sessionmaker(sqlite_engine)
    install_session_capture(factory)
    play(factory)
    by_session_sqlite = _canonical(outbox_events(sqlite_engine))

    assert len(by_trigger) == len(EXPECTED)
    assert by_session_pg == by_trigger
    assert by_session_sqlite == by_trigger


def test_rolled_back_transaction_gives_no_event(pg_engine: Engine) -> None:
    with pg_engine.begin() as conn:
        install_triggers(conn)
    with Session(pg_engine) as s:
        user, client, project = base_rows(s)
        new_invoice(s, user, client, project, number="INV-RB")
        s.flush()
        s.rollback()
    with pg_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(outbox)).scalar_one() == 0


def test_concurrent_edits_of_one_invoice_get_versions_in_commit_order(pg_engine: Engine) -> None:
    with pg_engine.begin() as conn:
        install_triggers(conn)
    with Session(pg_engine) as s:
        user, client, project = base_rows(s)
        inv = new_invoice(s, user, client, project, number="INV-CC", items=2)
        s.commit()
        inv_id, (item1, item2) = inv.id, [i.id for i in inv.items]

    first_touched = threading.Event()
    errors: list[BaseException] = []

    def slow_writer() -> None:
        try:
            with Session(pg_engine) as s:
                s.get_one(InvoiceItem, item1).description = "edited by A"
                s.flush()
                first_touched.set()
                time.sleep(1.0)  # B now waits on the invoice row lock
                s.commit()
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    a = threading.Thread(target=slow_writer)
    a.start()
    assert first_touched.wait(10)
    started = time.monotonic()
    with Session(pg_engine) as s:
        s.get_one(InvoiceItem, item2).description = "edited by B"
        s.commit()
    waited = time.monotonic() - started
    a.join(10)
    assert not errors
    assert waited > 0.5, "B should have waited for A (root row lock)"

    events = outbox_events(pg_engine)
    updates = [e for e in events if e["event_type"] == "invoice.updated" and e["aggregate_id"] == str(inv_id)]
    assert [e["aggregate_version"] for e in updates] == [2, 3]
    v2, v3 = (e["state"]["items"] for e in updates)
    assert [i["description"] for i in v2] == ["edited by A", "Consulting hours 2"]
    assert [i["description"] for i in v3] == ["edited by A", "edited by B"]  # the newest version has both


def test_item_moved_between_invoices_updates_both(pg_engine: Engine) -> None:
    with pg_engine.begin() as conn:
        install_triggers(conn)
    with Session(pg_engine) as s:
        user, client, project = base_rows(s)
        a = new_invoice(s, user, client, project, number="INV-A", items=1)
        b = new_invoice(s, user, client, project, number="INV-B", items=1)
        s.commit()
        item = a.items[0]
        item.invoice_id = b.id
        s.commit()
        a_id, b_id = a.id, b.id
    events = outbox_events(pg_engine)
    last = {e["aggregate_id"]: e for e in events if e["event_type"] == "invoice.updated"}
    assert last[str(a_id)]["state"]["items"] == []
    assert len(last[str(b_id)]["state"]["items"]) == 2


def test_uninstall_removes_every_trigger(pg_engine: Engine) -> None:
    with pg_engine.begin() as conn:
        install_triggers(conn)
        install_triggers(conn)  # idempotent
        # One per (table, aggregate) it belongs to, and the flush trigger.
        assert len(installed_triggers(conn)) == 9
        uninstall_triggers(conn)
        assert installed_triggers(conn) == []
    with Session(pg_engine) as s:
        user, client, project = base_rows(s)
        new_invoice(s, user, client, project, number="INV-OFF")
        s.commit()
    with pg_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(outbox)).scalar_one() == 0


def test_bulk_statement_touching_many_aggregates(pg_engine: Engine) -> None:
    with pg_engine.begin() as conn:
        install_triggers(conn)
    with Session(pg_engine) as s:
        user, client, project = base_rows(s)
        for n in range(20):
            new_invoice(s, user, client, project, number=f"INV-BULK-{n}", items=3)
        s.commit()
    with pg_engine.begin() as conn:
        conn.execute(text("UPDATE invoices SET status = 'sent'"))
        conn.execute(text("UPDATE invoice_items SET unit_price = unit_price + 1"))
    with pg_engine.connect() as conn:
        counts = dict(conn.execute(select(outbox.c.type, func.count()).group_by(outbox.c.type)).all())
    # one event per invoice per transaction, although the transaction ran two statements that touched the
    # invoice row and three item rows of each invoice
    assert counts == {"client.created": 1, "invoice.created": 20, "invoice.updated": 20}
