"""A TimeTracker that lived before ttsync: records written with capture off, and what TimeTracker's own
QuickBooks connector left in QBO for some of them (with or without the id in ``integration_metadata``).

Each invoice has a date of its own and every amount is unique, so the old connector's entities can be told
apart the way ttsync must find them when the id was not stored: customer, date and amount (the old connector
sent no DocNumber and no tax). Where several fit, ttsync creates rather than guesses (see mapping.legacy_match).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, insert, text

from producer.timetracker_schema import Client, Expense, Invoice, InvoiceItem, Payment, Project, User

ISSUED = dt.date(2026, 6, 1)
OLD_TS = dt.datetime(2026, 6, 1, 8, 0, 0)


@dataclass
class Seeded:
    clients: list[int] = field(default_factory=list)
    invoices: dict[int, str] = field(default_factory=dict)  # id -> status
    expenses: dict[int, str] = field(default_factory=dict)
    payments: list[int] = field(default_factory=list)
    legacy: dict[tuple[str, int], str] = field(default_factory=dict)  # (type, id) -> QBO id the old one made
    legacy_id_stored: set[tuple[str, int]] = field(default_factory=set)

    @property
    def records(self) -> int:
        return len(self.clients) + len(self.invoices) + len(self.expenses) + len(self.payments)


def _invoice_status(i: int) -> str:
    return ("sent", "sent", "sent", "sent", "paid", "sent", "draft", "cancelled", "paid", "draft")[i % 10]


def _expense_status(i: int) -> str:
    return ("approved", "approved", "rejected", "approved", "pending", "approved", "approved")[i % 7]


def seed_timetracker(engine: Engine, *, clients: int, invoices: int, expenses: int) -> Seeded:
    """Records as TimeTracker wrote them before ttsync was installed: capture triggers do not fire
    (``session_replication_role = replica``), so nothing is in the outbox."""
    seeded = Seeded()

    def add(conn: Any, model: Any, **values: Any) -> int:
        return int(conn.execute(insert(model.__table__).values(**values).returning(model.__table__.c.id)).scalar_one())

    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        user_id = add(conn, User, username="backfill")
        names: dict[int, str] = {}
        projects: dict[int, int] = {}
        for c in range(clients):
            name = f"Backfill Client {c:04d} O'Neil"
            cid = add(conn, Client, name=name, email=f"ap{c}@example.com", created_at=OLD_TS, updated_at=OLD_TS)
            seeded.clients.append(cid)
            names[cid] = name
            projects[cid] = add(conn, Project, name=f"Project {cid}", client_id=cid)
        for i in range(invoices):
            cid = seeded.clients[i % len(seeded.clients)]
            price = Decimal(100 + i) + Decimal("0.25")  # unique subtotal per invoice
            subtotal = price * 3
            tax = (subtotal * Decimal("0.10")).quantize(Decimal("0.01"))
            status = _invoice_status(i)
            iid = add(conn, Invoice, invoice_number=f"BF-{i:05d}", project_id=projects[cid], client_id=cid,
                      client_name=names[cid], client_email=f"ap{cid}@example.com",
                      issue_date=ISSUED + dt.timedelta(days=i), due_date=ISSUED + dt.timedelta(days=30 + i),
                      status=status, subtotal=subtotal, tax_rate=Decimal("10"), tax_amount=tax,
                      total_amount=subtotal + tax, currency_code="USD",
                      amount_paid=subtotal + tax if status == "paid" else Decimal("0"),
                      payment_status="paid" if status == "paid" else "unpaid", created_by=user_id,
                      created_at=OLD_TS, updated_at=OLD_TS)
            for qty, desc in ((1, "Design"), (2, "Build")):
                add(conn, InvoiceItem, invoice_id=iid, description=desc, quantity=Decimal(qty), unit_price=price,
                    total_amount=price * qty, created_at=OLD_TS)
            seeded.invoices[iid] = status
            if status == "paid":
                seeded.payments.append(add(
                    conn, Payment, invoice_id=iid, amount=subtotal + tax, currency="USD",
                    payment_date=ISSUED + dt.timedelta(days=10 + i), method="bank_transfer",
                    status="completed", created_at=OLD_TS, updated_at=OLD_TS))
        for x in range(expenses):
            status = _expense_status(x)
            seeded.expenses[add(
                conn, Expense, user_id=user_id, title=f"Trip {x}", category="travel",
                amount=Decimal(20 + x) + Decimal("0.37"), tax_amount=Decimal("1.50"), currency_code="USD",
                expense_date=ISSUED + dt.timedelta(days=x % 60), status=status, vendor="Rail Co",
                payment_method="card", created_at=OLD_TS, updated_at=OLD_TS)] = status
    return seeded


def seed_old_connector(engine: Engine, admin: Any, realm: str, seeded: Seeded, *, every: int = 3) -> None:
    """What TimeTracker's connector did: a Customer per client (found by name), an Invoice for every
    ``every``-th sent or paid invoice and a Purchase for every ``every``-th approved expense, created without
    DocNumber or tax. It stored the QBO id for half of them; for the other half the write never happened."""
    with engine.connect() as conn:
        clients = conn.execute(text("SELECT id, name FROM clients WHERE id = ANY(:ids)"),
                               {"ids": seeded.clients}).all()
        invoices = conn.execute(text(
            "SELECT id, client_id, issue_date, due_date FROM invoices WHERE id = ANY(:ids) ORDER BY id"),
            {"ids": [i for i, s in seeded.invoices.items() if s in ("sent", "paid")]}).all()
        items = conn.execute(text("SELECT invoice_id, quantity, unit_price FROM invoice_items ORDER BY id")).all()
        expenses = conn.execute(text(
            "SELECT id, amount, expense_date FROM expenses WHERE id = ANY(:ids) ORDER BY id"),
            {"ids": [e for e, s in seeded.expenses.items() if s == "approved"]}).all()
    customer_ids = admin(f"realms/{realm}/seed", {"Customer": [{"DisplayName": name} for _cid, name in clients]})
    customer_of = {cid: qid for (cid, _n), qid in zip(clients, customer_ids["Customer"], strict=True)}
    accounts = admin(f"realms/{realm}/entities?type=Account")["Account"]
    bank = next(a["Id"] for a in accounts if a.get("AccountType") == "Bank")
    expense_account = next(a["Id"] for a in accounts if a.get("AccountType") == "Expense")
    item = next(i["Id"] for i in admin(f"realms/{realm}/entities?type=Item")["Item"] if i.get("Type") == "Service")
    lines: dict[int, list[dict[str, Any]]] = {}
    for inv_id, qty, price in items:
        lines.setdefault(inv_id, []).append({
            "Amount": float(qty * price), "DetailType": "SalesItemLineDetail",
            "SalesItemLineDetail": {"ItemRef": {"value": item}, "Qty": float(qty), "UnitPrice": float(price)}})
    chosen_invoices = invoices[::every]
    chosen_expenses = expenses[::every]
    made = admin(f"realms/{realm}/seed", {
        "Invoice": [{"CustomerRef": {"value": customer_of[cid]}, "Line": lines[iid], "TxnDate": d.isoformat(),
                     "DueDate": due.isoformat()} for iid, cid, d, due in chosen_invoices],
        "Purchase": [{"PaymentType": "Cash", "AccountRef": {"value": bank}, "TxnDate": d.isoformat(),
                      "Line": [{"Amount": float(amount), "DetailType": "AccountBasedExpenseLineDetail",
                                "AccountBasedExpenseLineDetail": {"AccountRef": {"value": expense_account}}}]}
                     for _eid, amount, d in chosen_expenses],
    })
    stored: dict[str, list[tuple[int, str]]] = {"invoices": [], "expenses": []}
    for n, ((iid, *_), qid) in enumerate(zip(chosen_invoices, made["Invoice"], strict=True)):
        seeded.legacy[("invoice", iid)] = qid
        if n % 2 == 0:
            stored["invoices"].append((iid, qid))
    for n, ((eid, *_), qid) in enumerate(zip(chosen_expenses, made["Purchase"], strict=True)):
        seeded.legacy[("expense", eid)] = qid
        if n % 2 == 0:
            stored["expenses"].append((eid, qid))
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        for table, key in (("invoices", "invoice_id"), ("expenses", "purchase_id")):
            for rid, qid in stored[table]:
                conn.execute(text(f"UPDATE {table} SET integration_metadata = :m WHERE id = :i"),
                             {"m": json.dumps({"quickbooks": {key: qid}}), "i": rid})
                seeded.legacy_id_stored.add((table[:-1], rid))
