"""What a payment does to a TimeTracker invoice, as TimeTracker's own payment routes do it (app/routes/payments.py
and Invoice.update_payment_status, 5.10.0): pure.

- recording a completed payment adds it to ``amount_paid``; the invoice becomes ``paid`` once fully paid;
- deleting one takes it off (never below zero); a ``paid`` invoice no longer fully paid goes back to ``sent``;
- editing one's amount does both: ``paid`` when fully paid, back to ``sent`` when a ``paid`` one no longer is.
``payment_status``: unpaid (nothing paid), fully_paid, overpaid, else partially_paid."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

PaymentChange = Literal["create", "edit", "delete"]
CENT = Decimal("0.01")


def payment_status(amount_paid: Decimal, total: Decimal) -> str:
    if not amount_paid:
        return "unpaid"
    if amount_paid >= total:
        return "overpaid" if amount_paid > total else "fully_paid"
    return "partially_paid"


@dataclass(frozen=True)
class InvoicePayment:
    """The invoice fields a payment changes."""

    amount_paid: Decimal
    payment_status: str
    status: str


def invoice_after(amount_paid: Decimal, total: Decimal, status: str, delta: Decimal,
                  change: PaymentChange) -> InvoicePayment:
    paid = max(Decimal("0"), amount_paid + delta)
    state = payment_status(paid, total)
    if state == "fully_paid" and change in ("create", "edit"):
        status = "paid"
    elif status == "paid" and state != "fully_paid" and change in ("edit", "delete"):
        status = "sent"
    return InvoicePayment(paid, state, status)


def amounts_by_invoice(payment: dict[str, Any] | None) -> dict[str, Decimal]:
    """How much of a QBO Payment went to each invoice (by QBO invoice id); {} for a deleted one. A voided
    payment's lines are zero: every invoice it paid gets 0 back."""
    out: dict[str, Decimal] = defaultdict(Decimal)
    for line in (payment or {}).get("Line") or []:
        for linked in line.get("LinkedTxn") or []:
            if linked.get("TxnType") == "Invoice" and linked.get("TxnId"):
                out[str(linked["TxnId"])] += Decimal(str(line.get("Amount") or 0)).quantize(CENT)
    return dict(out)


def payment_method(payment: dict[str, Any]) -> str | None:
    """TimeTracker's method for a QBO payment method name (Cash, Check, Credit Card...), or None."""
    name = str(((payment.get("PaymentMethodRef") or {}).get("name")) or "").strip().lower().replace(" ", "_")
    known = {"cash": "cash", "check": "check", "cheque": "check", "credit_card": "credit_card",
             "visa": "credit_card", "mastercard": "credit_card", "american_express": "credit_card",
             "debit_card": "debit_card", "bank_transfer": "bank_transfer", "ach": "bank_transfer",
             "paypal": "paypal"}
    return known.get(name) or (name[:50] or None)
