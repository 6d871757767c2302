"""Realistic TimeTracker activity for tests and benchmarks, written through TimeTracker's ORM models."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal

from sqlalchemy.orm import Session

from producer.timetracker_schema import Client, Expense, Invoice, InvoiceItem, Payment, Project, User

_counter = itertools.count(1)
FIXED_TS = dt.datetime(2026, 11, 1, 9, 30, 0)


def base_rows(session: Session, *, name: str | None = None, fixed_times: bool = False) -> tuple[User, Client, Project]:
    n = next(_counter)
    user = User(username=f"user{n}-{id(session)}")
    email = "billing@example.com" if fixed_times else f"billing{n}@example.com"
    client = Client(name=name or f"Client {n}-{id(session)}", email=email,
                    address="1 Main St\nSpringfield", contact_person="Pat Doe")
    if fixed_times:
        client.created_at = client.updated_at = FIXED_TS
    session.add_all([user, client])
    session.flush()
    project = Project(name=f"Project {n}", client_id=client.id)
    session.add(project)
    session.flush()
    return user, client, project


def new_invoice(
    session: Session, user: User, client: Client, project: Project, *, number: str, items: int = 2,
    status: str = "draft", fixed_times: bool = False,
) -> Invoice:
    inv = Invoice(
        invoice_number=number, project_id=project.id, client_id=client.id, client_name=client.name,
        client_email=client.email, issue_date=dt.date(2026, 11, 2), due_date=dt.date(2026, 12, 2),
        status=status, created_by=user.id, currency_code="USD", tax_rate=Decimal("10.00"),
    )
    total = Decimal("0")
    for i in range(items):
        qty, price = Decimal(i + 1), Decimal("75.50")
        item = InvoiceItem(description=f"Consulting hours {i + 1}", quantity=qty, unit_price=price,
                           total_amount=qty * price)
        if fixed_times:
            item.created_at = FIXED_TS
        inv.items.append(item)
        total += qty * price
    inv.subtotal = total
    inv.tax_amount = (total * Decimal("0.10")).quantize(Decimal("0.01"))
    inv.total_amount = inv.subtotal + inv.tax_amount
    if fixed_times:
        inv.created_at = inv.updated_at = FIXED_TS
    session.add(inv)
    return inv


def new_expense(session: Session, user: User, *, category: str = "travel", status: str = "pending",
                amount: str = "42.10", fixed_times: bool = False) -> Expense:
    exp = Expense(user_id=user.id, title="Train to client", category=category, amount=Decimal(amount),
                  tax_amount=Decimal("4.21"), currency_code="USD", expense_date=dt.date(2026, 11, 3),
                  status=status, vendor="Rail Co", payment_method="card")
    if fixed_times:
        exp.created_at = exp.updated_at = FIXED_TS
    session.add(exp)
    return exp


def new_payment(session: Session, invoice: Invoice, *, amount: str = "100.00", fixed_times: bool = False) -> Payment:
    pay = Payment(invoice_id=invoice.id, amount=Decimal(amount), currency="USD",
                  payment_date=dt.date(2026, 11, 10), method="bank_transfer", status="completed")
    if fixed_times:
        pay.created_at = pay.updated_at = FIXED_TS
    session.add(pay)
    return pay
