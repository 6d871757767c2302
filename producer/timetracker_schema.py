"""A faithful copy of the part of TimeTracker's schema that ttsync reads (DRYTRIX/TimeTracker models).

Same table names, column names and types as TimeTracker (``app/models/{client,project,invoice,payments,
expense}.py``), on a MetaData of its own so that it is never mixed with ttsync's tables: tests and the demo
create it; against a real TimeTracker database it already exists and is only read.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    Numeric,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def _utcnow() -> dt.datetime:
    # TimeTracker stores naive UTC timestamps.
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class TimeTrackerBase(DeclarativeBase):
    pass


class User(TimeTrackerBase):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True, nullable=False)
    role: Mapped[str] = mapped_column(String(20), default="user")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow)


class Client(TimeTrackerBase):
    __tablename__ = "clients"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    contact_person: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(50))
    address: Mapped[str | None] = mapped_column(Text)
    default_hourly_rate: Mapped[Decimal | None] = mapped_column(Numeric(9, 2))
    status: Mapped[str] = mapped_column(String(20), default="active", nullable=False)
    custom_fields: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow, nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow, onupdate=_utcnow, nullable=False)


class Project(TimeTrackerBase):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    billable: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    hourly_rate: Mapped[Decimal | None] = mapped_column(Numeric(9, 2))
    billing_ref: Mapped[str | None] = mapped_column(String(100))
    code: Mapped[str | None] = mapped_column(String(20), unique=True)
    status: Mapped[str] = mapped_column(String(20), default="active", nullable=False)
    budget_amount: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    custom_fields: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow, nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow, onupdate=_utcnow, nullable=False)

    client: Mapped[Client] = relationship()


class Invoice(TimeTrackerBase):
    __tablename__ = "invoices"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    invoice_number: Mapped[str] = mapped_column(String(50), unique=True, nullable=False)
    # Nullable in the migrated schema (tests/fixtures/timetracker_5_10_0_schema.sql), whatever the model says.
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"))
    client_name: Mapped[str] = mapped_column(String(200), nullable=False)
    client_email: Mapped[str | None] = mapped_column(String(200))
    client_address: Mapped[str | None] = mapped_column(Text)
    buyer_reference: Mapped[str | None] = mapped_column(String(200))
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"), nullable=False)
    issue_date: Mapped[dt.date] = mapped_column(Date, nullable=False)
    due_date: Mapped[dt.date] = mapped_column(Date, nullable=False)
    status: Mapped[str] = mapped_column(String(20), default="draft", nullable=False)
    subtotal: Mapped[Decimal] = mapped_column(Numeric(10, 2), default=Decimal("0"), nullable=False)
    tax_rate: Mapped[Decimal] = mapped_column(Numeric(5, 2), default=Decimal("0"), nullable=False)
    tax_amount: Mapped[Decimal] = mapped_column(Numeric(10, 2), default=Decimal("0"), nullable=False)
    total_amount: Mapped[Decimal] = mapped_column(Numeric(10, 2), default=Decimal("0"), nullable=False)
    currency_code: Mapped[str] = mapped_column(String(3), default="EUR", nullable=False)
    notes: Mapped[str | None] = mapped_column(Text)
    terms: Mapped[str | None] = mapped_column(Text)
    payment_date: Mapped[dt.date | None] = mapped_column(Date)
    payment_method: Mapped[str | None] = mapped_column(String(50))
    payment_reference: Mapped[str | None] = mapped_column(String(100))
    payment_notes: Mapped[str | None] = mapped_column(Text)
    amount_paid: Mapped[Decimal | None] = mapped_column(Numeric(10, 2), default=Decimal("0"))
    payment_status: Mapped[str] = mapped_column(String(20), default="unpaid", nullable=False)
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow, nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow, onupdate=_utcnow, nullable=False)
    integration_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    items: Mapped[list[InvoiceItem]] = relationship(
        back_populates="invoice", cascade="all, delete-orphan", order_by="InvoiceItem.id"
    )
    payments: Mapped[list[Payment]] = relationship(back_populates="invoice", cascade="all, delete-orphan")
    extra_goods: Mapped[list[ExtraGood]] = relationship(
        back_populates="invoice", cascade="all, delete-orphan", order_by="ExtraGood.id"
    )
    client: Mapped[Client] = relationship()


class InvoiceItem(TimeTrackerBase):
    __tablename__ = "invoice_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"), nullable=False)
    description: Mapped[str] = mapped_column(String(500), nullable=False)
    quantity: Mapped[Decimal] = mapped_column(Numeric(10, 2), default=Decimal("1"), nullable=False)
    unit_price: Mapped[Decimal] = mapped_column(Numeric(10, 2), nullable=False)
    total_amount: Mapped[Decimal] = mapped_column(Numeric(10, 2), nullable=False)
    time_entry_ids: Mapped[str | None] = mapped_column(String(500))
    stock_item_id: Mapped[int | None] = mapped_column(Integer)
    warehouse_id: Mapped[int | None] = mapped_column(Integer)
    is_stock_item: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow, nullable=False)

    invoice: Mapped[Invoice] = relationship(back_populates="items")


class ExtraGood(TimeTrackerBase):
    """``app/models/extra_good.py``: goods billed on an invoice beside its items (in its totals)."""

    __tablename__ = "extra_goods"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"))
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id"))
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(50), default="product", nullable=False)
    quantity: Mapped[Decimal] = mapped_column(Numeric(10, 2), default=Decimal("1"), nullable=False)
    unit_price: Mapped[Decimal] = mapped_column(Numeric(10, 2), nullable=False)
    total_amount: Mapped[Decimal] = mapped_column(Numeric(10, 2), nullable=False)
    currency_code: Mapped[str] = mapped_column(String(3), default="EUR", nullable=False)
    billable: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    sku: Mapped[str | None] = mapped_column(String(100))
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow, nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow, onupdate=_utcnow, nullable=False)

    invoice: Mapped[Invoice | None] = relationship(back_populates="extra_goods")


class InvoiceEmail(TimeTrackerBase):
    """``app/models/invoice_email.py``: one row per e-mail that sent an invoice."""

    __tablename__ = "invoice_emails"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"), nullable=False)
    recipient_email: Mapped[str] = mapped_column(String(200), nullable=False)
    subject: Mapped[str] = mapped_column(String(500), nullable=False)
    sent_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow, nullable=False)
    sent_by: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False)
    status: Mapped[str] = mapped_column(String(20), default="sent", nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow, nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow, onupdate=_utcnow, nullable=False)


class Payment(TimeTrackerBase):
    __tablename__ = "payments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"), nullable=False)
    amount: Mapped[Decimal] = mapped_column(Numeric(10, 2), nullable=False)
    currency: Mapped[str | None] = mapped_column(String(3))
    payment_date: Mapped[dt.date] = mapped_column(Date, nullable=False)
    method: Mapped[str | None] = mapped_column(String(50))
    reference: Mapped[str | None] = mapped_column(String(100))
    notes: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="completed", nullable=False)
    received_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    gateway_transaction_id: Mapped[str | None] = mapped_column(String(255))
    gateway_fee: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    net_amount: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow, nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow, onupdate=_utcnow, nullable=False)

    invoice: Mapped[Invoice] = relationship(back_populates="payments")


class Expense(TimeTrackerBase):
    __tablename__ = "expenses"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"))
    client_id: Mapped[int | None] = mapped_column(ForeignKey("clients.id"))
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(50), nullable=False)
    amount: Mapped[Decimal] = mapped_column(Numeric(10, 2), nullable=False)
    currency_code: Mapped[str] = mapped_column(String(3), default="EUR", nullable=False)
    tax_amount: Mapped[Decimal | None] = mapped_column(Numeric(10, 2), default=Decimal("0"))
    tax_rate: Mapped[Decimal | None] = mapped_column(Numeric(5, 2), default=Decimal("0"))
    payment_method: Mapped[str | None] = mapped_column(String(50))
    payment_date: Mapped[dt.date | None] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(20), default="pending", nullable=False)
    approved_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    approved_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    rejection_reason: Mapped[str | None] = mapped_column(Text)
    billable: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    reimbursable: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    invoiced: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id"))
    reimbursed: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    reimbursed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    expense_date: Mapped[dt.date] = mapped_column(Date, nullable=False)
    receipt_path: Mapped[str | None] = mapped_column(String(500))
    receipt_number: Mapped[str | None] = mapped_column(String(100))
    vendor: Mapped[str | None] = mapped_column(String(200))
    notes: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow, nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow, onupdate=_utcnow, nullable=False)
    integration_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON)


TIMETRACKER_METADATA = TimeTrackerBase.metadata
