"""A payment received in QBO becomes TimeTracker rows as TimeTracker's own payment route makes them: on the
in-memory QBO, a SQLite TimeTracker database and a SQLite state store."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from consumer.errors import MissingMapping
from consumer.writes import Result
from importer.apply_payment import PaymentImporter
from importer.notifications import Change
from importer.payment_effects import InvoicePayment, invoice_after
from producer.outbox_tables import import_links
from producer.timetracker_schema import Invoice, Payment
from tests.consumer_harness import REALM, FakeParts
from tests.timetracker_data import base_rows, new_invoice


class Books:
    """One sent TimeTracker invoice (total 249.15), synced: the entity map ties it to a QBO invoice."""

    def __init__(self, parts: FakeParts, timetracker: Engine) -> None:
        self.parts, self.timetracker = parts, timetracker
        with Session(timetracker) as session:
            user, client, project = base_rows(session)
            inv = new_invoice(session, user, client, project, number="INV-0042", status="sent")
            session.commit()
            self.invoice_id, self.total = inv.id, inv.total_amount
        customer = parts.qbo.create("Customer", {"DisplayName": "Acme"}, "c-1")
        item = parts.qbo.query("SELECT * FROM Item WHERE Name = 'Services'", "Item")[0]["Id"]
        self.qbo_invoice = parts.qbo.create("Invoice", {
            "CustomerRef": {"value": customer["Id"]}, "DocNumber": "INV-0042", "TxnDate": "2026-11-02",
            "Line": [{"DetailType": "SalesItemLineDetail", "Amount": float(self.total),
                      "SalesItemLineDetail": {"ItemRef": {"value": item}}}]}, "i-1")
        parts.store.adopt("invoice", str(self.invoice_id), self.qbo_invoice)
        self.customer = customer["Id"]
        self.importer = PaymentImporter(parts.qbo, timetracker, parts.store, REALM)

    def receive(self, amount: Decimal, rid: str = "p-1", invoice_qbo_id: str | None = None) -> dict[str, Any]:
        """A payment received in QBO (QuickBooks Payments, or a deposit the bookkeeper matched)."""
        return self.parts.qbo.create("Payment", {
            "CustomerRef": {"value": self.customer}, "TotalAmt": float(amount), "TxnDate": "2026-11-20",
            "PaymentRefNum": "CHK-981", "PaymentMethodRef": {"value": "1", "name": "Check"},
            "Line": [{"Amount": float(amount), "LinkedTxn": [{"TxnId": invoice_qbo_id or self.qbo_invoice["Id"],
                                                              "TxnType": "Invoice"}]}]}, rid)

    def apply(self, payment: dict[str, Any], operation: str = "Create") -> Any:
        return self.importer.apply(Change(REALM, "Payment", str(payment["Id"]), operation, "", "webhook"))

    def invoice(self) -> Any:
        with self.timetracker.connect() as conn:
            return conn.execute(select(Invoice.__table__).where(Invoice.__table__.c.id == self.invoice_id)).one()

    def payments(self) -> list[Any]:
        with self.timetracker.connect() as conn:
            return list(conn.execute(select(Payment.__table__)).all())


@pytest.fixture
def books(parts: FakeParts, sqlite_engine: Engine) -> Books:
    return Books(parts, sqlite_engine)


def test_the_payment_rules_are_timetrackers() -> None:
    total, zero = Decimal("100"), Decimal("0")
    assert invoice_after(zero, total, "sent", Decimal("100"), "create") == InvoicePayment(total, "fully_paid", "paid")
    assert invoice_after(zero, total, "sent", Decimal("40"), "create") == InvoicePayment(Decimal("40"),
                                                                                       "partially_paid", "sent")
    assert invoice_after(zero, total, "sent", Decimal("120"), "create").status == "sent"  # overpaid: the route's
    assert invoice_after(total, total, "paid", -total, "delete") == InvoicePayment(zero, "unpaid", "sent")
    assert invoice_after(Decimal("30"), total, "overdue", Decimal("-50"), "delete").amount_paid == 0  # never below
    assert invoice_after(total, total, "paid", Decimal("-10"), "edit").status == "sent"


def test_a_payment_received_in_qbo_marks_the_timetracker_invoice_paid(books: Books) -> None:
    payment = books.receive(books.total)
    assert books.apply(payment).result is Result.CREATED
    inv = books.invoice()
    assert (Decimal(inv.amount_paid), inv.payment_status, inv.status) == (books.total, "fully_paid", "paid")
    [row] = books.payments()
    assert (Decimal(row.amount), row.status, row.method, row.reference, str(row.payment_date)) == (
        books.total, "completed", "check", "CHK-981", "2026-11-20")
    assert books.parts.store.mapped("payment", str(row.id)).qbo_id == payment["Id"]  # type: ignore[union-attr]


def test_a_notification_delivered_twice_or_late_applies_once(books: Books) -> None:
    payment = books.receive(Decimal("100.00"))
    books.apply(payment)
    assert books.apply(payment).result is Result.DUPLICATE
    assert books.apply(payment, "Update").result is Result.DUPLICATE
    assert len(books.payments()) == 1 and Decimal(books.invoice().amount_paid) == Decimal("100.00")
    assert books.invoice().payment_status == "partially_paid" and books.invoice().status == "sent"


def test_a_payment_voided_or_deleted_in_qbo_is_reversed(books: Books) -> None:
    payment = books.receive(books.total)
    books.apply(payment)
    voided = books.parts.qbo.void("Payment", payment["Id"], payment["SyncToken"], "v-1")
    assert books.apply(voided, "Void").result is Result.DELETED
    inv = books.invoice()
    assert (Decimal(inv.amount_paid), inv.payment_status, inv.status) == (Decimal("0"), "unpaid", "sent")
    assert books.payments() == []
    with books.timetracker.connect() as conn:
        [link] = conn.execute(select(import_links)).all()
    assert link.tt_payment_id is None and link.amount == "0.00"


def test_a_payment_of_an_invoice_ttsync_never_synced_is_refused_with_the_reason(books: Books) -> None:
    stranger = books.parts.qbo.create("Invoice", {
        "CustomerRef": {"value": books.customer}, "DocNumber": "MANUAL-1", "TxnDate": "2026-11-02",
        "Line": [{"DetailType": "SalesItemLineDetail", "Amount": 50, "SalesItemLineDetail": {"ItemRef": {
            "value": books.qbo_invoice["Line"][0]["SalesItemLineDetail"]["ItemRef"]["value"]}}}]}, "i-2")
    payment = books.receive(Decimal("50"), "p-2", stranger["Id"])
    with pytest.raises(MissingMapping, match="not a TimeTracker invoice"):
        books.apply(payment)
    assert books.payments() == []


def test_ttsyncs_own_payments_are_echoes(books: Books) -> None:
    exported = books.receive(Decimal("10"), "p-3")
    books.parts.store.adopt("payment", "77", exported)  # the export consumer wrote it for TimeTracker payment 77
    assert books.apply(exported).result is Result.SKIPPED
    assert books.payments() == []


def test_a_deletion_delivered_again_changes_nothing(books: Books) -> None:
    payment = books.receive(books.total)
    books.apply(payment)
    books.parts.qbo.delete("Payment", payment["Id"], books.parts.qbo.read("Payment", payment["Id"])["SyncToken"],
                           "d-1")
    assert books.apply(payment, "Delete").result is Result.DELETED
    assert books.apply(payment, "Delete").result is Result.DUPLICATE
    assert books.payments() == [] and books.invoice().status == "sent"
