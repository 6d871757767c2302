"""TimeTracker 5.10.0's real schema, as its own migrations build it (tests/fixtures/..._schema.sql), and
changes made to it the way the real app makes them (timetracker-model.md §6): its routes, its REST API, its
daily job. Plain SQL on the migrated tables: the columns, nullability and defaults are the real ones, not our
copy of the models."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, text

CENT = Decimal("0.01")
FIXTURE = Path(__file__).parent / "fixtures" / "timetracker_5_10_0_schema.sql"
TIMETRACKER_VERSION = "5.10.0"


def load_schema(engine: Engine) -> None:
    """Build TimeTracker's 138 tables in an empty PostgreSQL database (straight to the driver: the dump holds
    function bodies with '%' and ':' that a paramstyle would take for parameters)."""
    with engine.begin() as conn, conn.connection.dbapi_connection.cursor() as cur:  # type: ignore[union-attr]
        cur.execute(FIXTURE.read_text())


def bleach(value: str) -> str:
    """What TimeTracker's web forms store (``sanitize_input`` -> ``bleach.clean``): & < > escaped."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def required_defaults(conn: Connection, table: str) -> dict[str, Any]:
    """Values for the NOT NULL columns without a database default: the real schema leaves many to Python-side
    defaults of the models (users.two_factor_enabled, invoices.payment_status, ...)."""
    zero = {"boolean": False, "integer": 0, "bigint": 0, "numeric": 0, "double precision": 0, "real": 0,
            "date": dt.date(2026, 1, 1), "timestamp without time zone": dt.datetime(2026, 1, 1),
            "json": "{}", "jsonb": "{}"}
    rows = conn.execute(text(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'public' "
        "AND table_name = :t AND is_nullable = 'NO' AND column_default IS NULL"), {"t": table})
    return {name: zero.get(dtype, "") for name, dtype in rows}


def insert(conn: Connection, table: str, values: dict[str, Any]) -> int:
    row = {**required_defaults(conn, table), **values}
    cols = ", ".join(f'"{c}"' for c in row)
    params = ", ".join(f":{c}" for c in row)
    return int(conn.execute(text(f'INSERT INTO "{table}" ({cols}) VALUES ({params}) RETURNING id'), row).scalar_one())


class RealApp:
    """Writes as TimeTracker 5.10.0's code does, one transaction per user action."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        with engine.begin() as conn:
            self.user_id = insert(conn, "users", {"username": "admin", "role": "admin", "is_active": True})

    def client(self, name: str, *, via_form: bool = True, email: str | None = None) -> int:
        with self.engine.begin() as conn:
            return insert(conn, "clients", {"name": bleach(name) if via_form else name, "email": email,
                                            "status": "active", "created_by": self.user_id})

    def invoice(self, number: str, client_id: int, items: list[tuple[str, str, str]], *, status: str = "draft",
                due: dt.date | None = None, tax_rate: str = "0") -> int:
        """``/invoices/new``: the invoice (no project: invoices.project_id is nullable) with its items."""
        with self.engine.begin() as conn:
            name = conn.execute(text("SELECT name FROM clients WHERE id = :c"), {"c": client_id}).scalar_one()
            iid = insert(conn, "invoices", {
                "invoice_number": number, "client_id": client_id, "client_name": name,
                "issue_date": dt.date(2026, 11, 2), "due_date": due or dt.date(2026, 12, 2), "status": status,
                "tax_rate": Decimal(tax_rate), "currency_code": "EUR", "payment_status": "unpaid",
                "amount_paid": Decimal("0"), "created_by": self.user_id})
            for desc, qty, price in items:
                insert(conn, "invoice_items", {
                    "invoice_id": iid, "description": bleach(desc), "quantity": Decimal(qty),
                    "unit_price": Decimal(price), "total_amount": (Decimal(qty) * Decimal(price)).quantize(CENT)})
            self._calculate_totals(conn, iid)
        return iid

    def add_extra_good(self, invoice_id: int, name: str, qty: str, price: str) -> None:
        with self.engine.begin() as conn:
            insert(conn, "extra_goods", {
                "invoice_id": invoice_id, "name": bleach(name), "category": "product", "quantity": Decimal(qty),
                "unit_price": Decimal(price), "total_amount": (Decimal(qty) * Decimal(price)).quantize(CENT),
                "created_by": self.user_id})
            self._calculate_totals(conn, invoice_id)

    def expense(self, title: str, category: str, method: str, amount: str, tax: str = "0.00", *,
                status: str = "approved", vendor: str | None = None) -> int:
        with self.engine.begin() as conn:
            return insert(conn, "expenses", {
                "user_id": self.user_id, "title": bleach(title), "category": category, "amount": Decimal(amount),
                "tax_amount": Decimal(tax), "payment_method": method, "status": status, "billable": True,
                "expense_date": dt.date(2026, 11, 3), "vendor": bleach(vendor) if vendor else None})

    def link_expense(self, invoice_id: int, expense_id: int) -> None:
        """The invoice's "expenses sync": mark_as_invoiced, then calculate_totals."""
        with self.engine.begin() as conn:
            conn.execute(text("UPDATE expenses SET invoiced = true, invoice_id = :i, updated_at = now() "
                              "WHERE id = :e"), {"i": invoice_id, "e": expense_id})
            self._calculate_totals(conn, invoice_id)

    def set_status(self, invoice_id: int, status: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("UPDATE invoices SET status = :s, updated_at = now() WHERE id = :i"),
                         {"s": status, "i": invoice_id})

    def mark_paid(self, invoice_id: int) -> None:
        """The status menu's "paid": amount_paid = total, fully_paid, and no payments row."""
        with self.engine.begin() as conn:
            conn.execute(text(
                "UPDATE invoices SET status = 'paid', amount_paid = total_amount, payment_status = 'fully_paid', "
                "payment_date = :d, updated_at = now() WHERE id = :i"), {"i": invoice_id, "d": dt.date(2026, 11, 20)})

    def record_payment(self, invoice_id: int, amount: str, method: str = "bank_transfer") -> int:
        """``payment_service.create_payment``: the row, then amount_paid / payment_status / status."""
        with self.engine.begin() as conn:
            pid = insert(conn, "payments", {
                "invoice_id": invoice_id, "amount": Decimal(amount), "currency": "EUR",
                "payment_date": dt.date(2026, 11, 21), "method": method, "status": "completed"})
            self._recompute_paid(conn, invoice_id)
        return pid

    def refund(self, payment_id: int) -> None:
        """Editing a payment to 'refunded': amount_paid drops and a paid invoice goes back to 'sent'."""
        with self.engine.begin() as conn:
            iid = conn.execute(text("UPDATE payments SET status = 'refunded', updated_at = now() WHERE id = :p "
                                    "RETURNING invoice_id"), {"p": payment_id}).scalar_one()
            self._recompute_paid(conn, iid)

    def overdue_job(self, today: dt.date) -> int:
        """``check_overdue_invoices``: drafts *and* sent invoices past their due date become overdue."""
        with self.engine.begin() as conn:
            return conn.execute(text(
                "UPDATE invoices SET status = 'overdue', updated_at = now() "
                "WHERE status IN ('draft', 'sent') AND due_date < :t"), {"t": today}).rowcount

    # -- what the models compute ------------------------------------------------------------------------

    @staticmethod
    def _calculate_totals(conn: Connection, invoice_id: int) -> None:
        conn.execute(text(
            "UPDATE invoices i SET subtotal = s.sub, tax_amount = round(s.sub * i.tax_rate / 100, 2), "
            "total_amount = s.sub + round(s.sub * i.tax_rate / 100, 2), updated_at = now() FROM (SELECT "
            "  COALESCE((SELECT SUM(total_amount) FROM invoice_items WHERE invoice_id = :i), 0) "
            "+ COALESCE((SELECT SUM(total_amount) FROM extra_goods WHERE invoice_id = :i), 0) "
            "+ COALESCE((SELECT SUM(amount + COALESCE(tax_amount, 0)) FROM expenses WHERE invoice_id = :i), 0) "
            "AS sub) s WHERE i.id = :i"), {"i": invoice_id})

    @staticmethod
    def _recompute_paid(conn: Connection, invoice_id: int) -> None:
        conn.execute(text(
            "UPDATE invoices SET amount_paid = p.paid, payment_status = CASE WHEN p.paid <= 0 THEN 'unpaid' "
            "WHEN p.paid < total_amount THEN 'partially_paid' ELSE 'fully_paid' END, "
            "status = CASE WHEN p.paid >= total_amount AND total_amount > 0 THEN 'paid' "
            "WHEN status = 'paid' THEN 'sent' ELSE status END, updated_at = now() "
            "FROM (SELECT COALESCE(SUM(amount), 0) AS paid FROM payments WHERE invoice_id = :i "
            "AND status = 'completed') p WHERE id = :i"), {"i": invoice_id})

    def invoice_row(self, invoice_id: int) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return dict(conn.execute(text("SELECT * FROM invoices WHERE id = :i"), {"i": invoice_id}).one()._mapping)
