"""SQLAlchemy capture on SQLite: the embedded demo database, no concurrency needed."""

from __future__ import annotations

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import sessionmaker

from producer.outbox_tables import aggregate_versions, outbox
from producer.session_capture import install_session_capture
from producer.timetracker_schema import Invoice
from tests.capture_scenario import EXPECTED, outbox_events, per_aggregate, play


def test_scenario_gives_one_event_per_aggregate_per_transaction(sqlite_engine: Engine) -> None:
    factory = sessionmaker(sqlite_engine)
    install_session_capture(factory, source="tt-test")
    play(factory)
    events = outbox_events(sqlite_engine)
    triples = [(e["event_type"], e["aggregate_id"], e["aggregate_version"]) for e in events]
    assert per_aggregate(triples) == per_aggregate(EXPECTED)
    by_key = {(e["event_type"], e["aggregate_id"], e["aggregate_version"]): e for e in events}

    created = by_key[("invoice.created", "1", 1)]["state"]
    assert len(created["items"]) == 2 and created["status"] == "draft"
    assert created["client"]["name"] == "Acme O'Brien & Sons"
    sent = by_key[("invoice.updated", "1", 2)]["state"]
    assert len(sent["items"]) == 3 and sent["status"] == "sent"
    assert by_key[("invoice.updated", "1", 3)]["state"]["items"][0]["quantity"] == "3.00"
    assert by_key[("payment.created", "1", 1)]["state"]["invoice_number"] == "INV-0001"
    assert by_key[("invoice.updated", "1", 4)]["state"]["status"] == "paid"
    deleted = by_key[("expense.deleted", "1", 3)]
    assert deleted["state"]["status"] == "approved"  # the last state before the delete


def test_versions_rise_monotonically_and_are_recorded(sqlite_engine: Engine) -> None:
    factory = sessionmaker(sqlite_engine)
    install_session_capture(factory)
    play(factory)
    with sqlite_engine.connect() as conn:
        versions = dict(
            ((t, i), v) for t, i, v in conn.execute(select(aggregate_versions))
        )
        seqs = conn.execute(select(outbox.c.seq).order_by(outbox.c.seq)).scalars().all()
    assert versions[("invoice", "1")] == 4
    assert versions[("expense", "1")] == 3
    assert seqs == list(range(1, len(seqs) + 1))


def test_install_is_idempotent_and_removable(sqlite_engine: Engine) -> None:
    factory = sessionmaker(sqlite_engine)
    first = install_session_capture(factory)
    assert install_session_capture(factory) is first
    first.remove()
    with factory() as s:
        from tests.timetracker_data import base_rows, new_invoice

        user, client, project = base_rows(s)
        new_invoice(s, user, client, project, number="INV-X")
        s.commit()
        assert s.scalar(select(func.count()).select_from(Invoice)) == 1
    with sqlite_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(outbox)).scalar_one() == 0


def test_bulk_orm_updates_and_deletes_are_captured_too(sqlite_engine: Engine) -> None:
    """``session.execute(update(...))`` and ``Query.update`` change rows the session never loads."""
    from sqlalchemy import delete, update

    from producer.timetracker_schema import Expense, InvoiceItem
    from tests.timetracker_data import base_rows, new_expense, new_invoice

    factory = sessionmaker(sqlite_engine)
    install_session_capture(factory)
    with factory() as s:
        user, client, project = base_rows(s)
        inv = new_invoice(s, user, client, project, number="BULK-1", items=2, status="draft")
        exp = new_expense(s, user, status="pending")
        s.commit()
        inv_id, exp_id = inv.id, exp.id
    before = len(outbox_events(sqlite_engine))
    with factory() as s:
        s.execute(update(Invoice).where(Invoice.id == inv_id).values(status="sent"))
        s.commit()
    with factory() as s:
        s.execute(delete(InvoiceItem).where(InvoiceItem.invoice_id == inv_id, InvoiceItem.id == InvoiceItem.id))
        s.query(Expense).filter(Expense.id == exp_id).update({"status": "approved"})
        s.commit()
    events = outbox_events(sqlite_engine)[before:]
    got = [(e["event_type"], e["state"].get("status"), len(e["state"].get("items", []))) for e in events]
    assert ("invoice.updated", "sent", 2) in got
    assert ("invoice.updated", "sent", 0) in got
    assert ("expense.updated", "approved", 0) in got


def test_a_session_marked_as_the_importers_marks_its_events(sqlite_engine: Engine) -> None:
    from producer.session_capture import ORIGIN_INFO_KEY
    from tests.timetracker_data import base_rows, new_invoice

    factory = sessionmaker(sqlite_engine)
    install_session_capture(factory, source="tt-test")
    with factory() as s:
        user, client, project = base_rows(s)
        new_invoice(s, user, client, project, number="INV-9")
        s.commit()
    with factory() as s:
        s.info[ORIGIN_INFO_KEY] = "qbo-import"
        s.scalars(select(Invoice)).one().status = "paid"
        s.commit()
    with sqlite_engine.connect() as conn:
        origins = conn.execute(select(outbox.c.type, outbox.c.origin).order_by(outbox.c.seq)).all()
    assert [(t, o) for t, o in origins if t.startswith("invoice")] == [("invoice.created", None),
                                                                       ("invoice.updated", "qbo-import")]
