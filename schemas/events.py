"""The event contract: one envelope, and a payload per aggregate type built from TimeTracker's columns.

Every payload is the full state of the aggregate after the change (for ``*.deleted``, its last state), so a
consumer can apply any event on its own and a newer version always supersedes an older one.
Money is ``Decimal`` and travels as a JSON string; dates are ISO 8601; unknown extra fields are ignored so
that TimeTracker may add columns without breaking consumers.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, field_validator

from schemas.contract import SCHEMA_VERSION

Money = Annotated[Decimal, PlainSerializer(lambda d: str(d), return_type=str, when_used="json")]
"""A Decimal that serialises as a string, never a float."""

AggregateType = Literal["invoice", "expense", "payment", "client"]
EventAction = Literal["created", "updated", "deleted", "snapshot"]


class _State(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ClientState(_State):
    """Row of TimeTracker's ``clients`` table."""

    id: int
    name: str
    contact_person: str | None = None
    email: str | None = None
    phone: str | None = None
    address: str | None = None
    default_hourly_rate: Money | None = None
    status: str = "active"
    custom_fields: dict[str, Any] | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    invoice_currency: str | None = None  # the currency of the client's latest invoice, if it has one


class InvoiceItemState(_State):
    """Row of ``invoice_items``."""

    id: int
    invoice_id: int
    description: str
    quantity: Money
    unit_price: Money
    total_amount: Money
    time_entry_ids: str | None = None
    created_at: dt.datetime | None = None


class ExtraGoodState(_State):
    """Row of ``extra_goods`` linked to the invoice: TimeTracker adds it to the invoice's subtotal."""

    id: int
    invoice_id: int
    name: str
    description: str | None = None
    category: str | None = None
    quantity: Money
    unit_price: Money
    total_amount: Money
    sku: str | None = None


class LinkedExpenseState(_State):
    """An expense linked to the invoice (``expenses.invoice_id``): billed at its amount plus tax."""

    id: int
    invoice_id: int
    title: str
    description: str | None = None
    category: str | None = None
    amount: Money
    tax_amount: Money | None = None
    expense_date: dt.date | None = None

    @property
    def total_amount(self) -> Decimal:
        return self.amount + (self.tax_amount or Decimal("0"))


class InvoiceState(_State):
    """Row of ``invoices`` with its items, extra goods, linked expenses and client; ``payments_completed`` is
    the sum of its completed payment rows, ``emails_sent`` how often TimeTracker e-mailed it."""

    id: int
    invoice_number: str
    project_id: int | None = None
    client_id: int
    client_name: str
    client_email: str | None = None
    client_address: str | None = None
    issue_date: dt.date
    due_date: dt.date
    status: str
    subtotal: Money = Decimal("0")
    tax_rate: Money = Decimal("0")
    tax_amount: Money = Decimal("0")
    total_amount: Money = Decimal("0")
    currency_code: str = "EUR"
    notes: str | None = None
    terms: str | None = None
    amount_paid: Money | None = None
    payment_status: str | None = None
    payment_date: dt.date | None = None
    payment_reference: str | None = None
    integration_metadata: dict[str, Any] | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    items: tuple[InvoiceItemState, ...] = ()
    extra_goods: tuple[ExtraGoodState, ...] = ()
    expenses: tuple[LinkedExpenseState, ...] = ()
    client: ClientState | None = None
    payments_completed: Money | None = None
    emails_sent: int | None = None

    @property
    def unrecorded_payment(self) -> Decimal:
        """What ``amount_paid`` holds beyond the completed payment rows: TimeTracker's "mark as paid" sets
        amount_paid = total and writes no payment row. Zero when unknown (an event from before the tally)."""
        if self.payments_completed is None:
            return Decimal("0")
        return max(Decimal("0"), (self.amount_paid or Decimal("0")) - self.payments_completed)


class ExpenseState(_State):
    """Row of ``expenses``."""

    id: int
    user_id: int
    project_id: int | None = None
    client_id: int | None = None
    title: str
    description: str | None = None
    category: str
    amount: Money
    currency_code: str = "EUR"
    tax_amount: Money | None = None
    tax_rate: Money | None = None
    payment_method: str | None = None
    payment_date: dt.date | None = None
    status: str
    approved_by: int | None = None
    approved_at: dt.datetime | None = None
    rejection_reason: str | None = None
    billable: bool | None = None
    reimbursable: bool | None = None
    invoiced: bool | None = None
    invoice_id: int | None = None
    expense_date: dt.date
    receipt_number: str | None = None
    vendor: str | None = None
    notes: str | None = None
    tags: str | None = None
    integration_metadata: dict[str, Any] | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None

    @property
    def total_amount(self) -> Decimal:
        """TimeTracker's ``Expense.total_amount``: the net amount plus tax."""
        return self.amount + (self.tax_amount or Decimal("0"))


class PaymentState(_State):
    """Row of ``payments``; ``invoice_number`` is the invoice's, for matching in QBO."""

    id: int
    invoice_id: int
    invoice_number: str | None = None
    amount: Money
    currency: str | None = None
    payment_date: dt.date
    method: str | None = None
    reference: str | None = None
    notes: str | None = None
    status: str = "completed"
    gateway_transaction_id: str | None = None
    gateway_fee: Money | None = None
    net_amount: Money | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None


PAYLOAD_MODELS: dict[str, type[_State]] = {
    "invoice": InvoiceState,
    "expense": ExpenseState,
    "payment": PaymentState,
    "client": ClientState,
}


class EventEnvelope(BaseModel):
    """What a Kafka record's value holds: the outbox row's ``payload`` column, verbatim."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: uuid.UUID
    event_type: str = Field(pattern=r"^(invoice|expense|payment|client)\.(created|updated|deleted|snapshot)$")
    aggregate_type: AggregateType
    aggregate_id: str = Field(min_length=1, max_length=255)
    aggregate_version: int = Field(ge=1)
    occurred_at: dt.datetime
    schema_version: str = SCHEMA_VERSION
    source: str = "timetracker"
    payload: dict[str, Any]

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, value: dt.datetime) -> dt.datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)

    @property
    def action(self) -> EventAction:
        return self.event_type.split(".", 1)[1]  # type: ignore[return-value]

    def state(self) -> InvoiceState | ExpenseState | PaymentState | ClientState:
        """The payload parsed into its aggregate's model (raises pydantic.ValidationError)."""
        return PAYLOAD_MODELS[self.aggregate_type].model_validate(self.payload)  # type: ignore[return-value]
