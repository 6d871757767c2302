"""One scripted stretch of TimeTracker activity, played against any database and capture method.

Every timestamp is set explicitly so that two databases given the same scenario hold the same rows, and
the events of the two capture methods can be compared field by field.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from producer.outbox_tables import outbox
from producer.timetracker_schema import Client, Expense, Invoice, InvoiceItem
from schemas import decode_event
from tests.timetracker_data import FIXED_TS, base_rows, new_expense, new_invoice, new_payment


def ts(n: int) -> dt.datetime:
    return FIXED_TS + dt.timedelta(minutes=n)


# (event type, aggregate id, version) the scenario must produce, in transaction order. Within one
# transaction the order across aggregates is not part of the contract: compare with ``per_aggregate``.
EXPECTED = [
    ("client.created", "1", 1),
    ("invoice.created", "1", 1),
    ("invoice.updated", "1", 2),
    ("invoice.updated", "1", 3),
    ("expense.created", "1", 1),
    ("expense.updated", "1", 2),
    ("payment.created", "1", 1),
    ("invoice.updated", "1", 4),
    ("expense.deleted", "1", 3),
    ("client.updated", "1", 2),
]


def play(factory: sessionmaker[Session]) -> None:
    with factory() as s:  # 1: client + invoice with two items, one transaction
        user, client, project = base_rows(s, name="Acme O'Brien & Sons", fixed_times=True)
        new_invoice(s, user, client, project, number="INV-0001", items=2, fixed_times=True)
        s.commit()
    with factory() as s:  # 2: invoice sent and an item added: one event
        inv = s.get(Invoice, 1)
        assert inv is not None
        inv.status = "sent"
        inv.updated_at = ts(1)
        inv.items.append(InvoiceItem(description="Travel time", quantity=Decimal("1.50"),
                                     unit_price=Decimal("40.00"), total_amount=Decimal("60.00"), created_at=ts(1)))
        s.commit()
    with factory() as s:  # 3: only an item changes: still an invoice event
        item = s.get(InvoiceItem, 1)
        assert item is not None
        item.quantity = Decimal("3.00")
        item.total_amount = Decimal("226.50")
        s.commit()
    with factory() as s:  # 4, 5: expense created, then approved
        new_expense(s, base_user(s), fixed_times=True)
        s.commit()
    with factory() as s:
        exp = s.get(Expense, 1)
        assert exp is not None
        exp.status = "approved"
        exp.approved_at = ts(5)
        exp.updated_at = ts(5)
        s.commit()
    with factory() as s:  # 6: a payment, and the invoice marked paid in the same transaction
        inv = s.get(Invoice, 1)
        assert inv is not None
        new_payment(s, inv, amount="100.00", fixed_times=True)
        inv.status = "paid"
        inv.amount_paid = Decimal("100.00")
        inv.updated_at = ts(6)
        s.commit()
    with factory() as s:  # 7: a draft created and deleted in one transaction: no event
        user = base_user(s)
        client = s.get_one(Client, 1)
        project_id = s.scalars(select(Invoice.project_id)).first()
        draft = Invoice(invoice_number="INV-TMP", project_id=project_id, client_id=client.id, client_name=client.name,
                        issue_date=dt.date(2026, 11, 5), due_date=dt.date(2026, 12, 5), created_by=user.id,
                        created_at=ts(7), updated_at=ts(7))
        s.add(draft)
        s.flush()
        s.delete(draft)
        s.commit()
    with factory() as s:  # 8: expense deleted: the event carries its last state
        s.delete(s.get_one(Expense, 1))
        s.commit()
    with factory() as s:  # 9: a rolled-back change: no event
        inv = s.get_one(Invoice, 1)
        inv.status = "cancelled"
        s.flush()
        s.rollback()
    with factory() as s:  # 10: client renamed
        client = s.get_one(Client, 1)
        client.name = "Acme Holdings"
        client.updated_at = ts(10)
        s.commit()


def per_aggregate(triples: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """Order that matters: per aggregate, by version."""
    return sorted(triples, key=lambda t: (t[0].split(".")[0], t[1], t[2]))


def base_user(s: Session) -> Any:
    from producer.timetracker_schema import User

    return s.scalars(select(User).order_by(User.id)).first()


def outbox_events(engine: Engine) -> list[dict[str, Any]]:
    """Outbox rows in order, decoded through the contract, without the fields that differ per run."""
    out = []
    with engine.connect() as conn:
        for row in conn.execute(select(outbox).order_by(outbox.c.seq)):
            payload = row.payload if isinstance(row.payload, dict) else json.loads(row.payload)
            evt = decode_event(json.dumps(payload).encode())
            assert str(evt.event_id) == str(row.id)
            assert evt.aggregate_version == row.aggregate_version
            assert evt.event_type == row.type
            out.append({
                "event_type": evt.event_type,
                "aggregate_id": evt.aggregate_id,
                "aggregate_version": evt.aggregate_version,
                "state": evt.state().model_dump(mode="json"),
            })
    return out
