"""Where a TimeTracker record becomes a QBO request body: pure functions of (state, resolved references,
options), no I/O. The resolver (references.py) finds the ids; the applier (applier.py) sends the request."""

from __future__ import annotations

import hashlib
import html
import json
import re
import uuid
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from consumer.errors import MappingError
from schemas.events import PAYLOAD_MODELS, ClientState, ExpenseState, InvoiceState, PaymentState

CENT = Decimal("0.01")
DOC_NUMBER_MAX = 21
TEXT_MAX = 4000
REQUESTID_NAMESPACE = uuid.UUID("3f0f4d0e-6c83-4c8e-9b7a-74747379e0c1")


@dataclass(frozen=True)
class MappingOptions:
    source: str = "timetracker"
    multicurrency: bool = True
    payment_types: dict[str, str] = field(default_factory=lambda: {
        "card": "CreditCard", "credit_card": "CreditCard", "creditcard": "CreditCard", "company_card": "CreditCard",
        "cash": "Cash", "check": "Check", "cheque": "Check", "bank_transfer": "Cash", "transfer": "Cash",
        "debit_card": "Cash", "paypal": "Cash", "other": "Cash"})
    default_payment_type: str = "Cash"
    # TimeTracker's web forms pass text through bleach, which stores "&" as "&amp;" (its REST API does not):
    # names and free text are decoded before they reach QBO.
    decode_html: bool = True
    # The currency of a customer made from a client event, before any invoice says otherwise: TimeTracker's
    # Settings.currency (EUR unless changed there).
    default_currency: str = "EUR"


@dataclass(frozen=True)
class InvoiceRefs:
    customer_id: str
    item_id: str
    tax_code_id: str | None = None


@dataclass(frozen=True)
class PurchaseRefs:
    paying_account_id: str
    expense_account_id: str
    vendor_id: str | None = None


@dataclass(frozen=True)
class PaymentRefs:
    customer_id: str
    invoice_qbo_id: str
    deposit_account_id: str | None = None


MARKER_RE = re.compile(r"ttsync:(invoice|expense|payment|client):(\d+)@(\S+)")


def marker(aggregate_type: str, aggregate_id: str | int, source: str) -> str:
    """Written into PrivateNote: says which TimeTracker record a QBO entity mirrors (found again after a crash)."""
    return f"ttsync:{aggregate_type}:{aggregate_id}@{source}"


def carries(note: str | None, mark: str) -> bool:
    """Whether a note carries exactly this marker: ``...@tt`` is not ``...@tt-eu`` (another instance's record)."""
    return re.search(re.escape(mark) + r"(?!\S)", note or "") is not None


def _money(value: Decimal) -> float | int:
    q = value.quantize(CENT, rounding=ROUND_HALF_UP)
    return int(q) if q == q.to_integral_value() else float(q)


def _text(value: str | None, limit: int = TEXT_MAX) -> str | None:
    if value is None:
        return None
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _note(mark: str, extra: str | None) -> str:
    return _text(f"{mark} {extra}".strip() if extra else mark) or mark


def _doc_number(value: str, what: str) -> str:
    if len(value) > DOC_NUMBER_MAX:
        raise MappingError(f"{what} {value!r} is longer than QBO's {DOC_NUMBER_MAX}-character DocNumber",
                           code="doc_number_too_long")
    return value


def expense_doc_number(expense_id: int) -> str:
    return f"TT-EXP-{expense_id}"


def _decode(value: Any) -> Any:
    if isinstance(value, str):
        return html.unescape(value) if "&" in value else value
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def readable_state(aggregate_type: str, payload: dict[str, Any], opts: MappingOptions
                   ) -> InvoiceState | ExpenseState | PaymentState | ClientState:
    """The event's payload as its aggregate's model, with HTML entities decoded in every text (bleach's
    ``&amp;``, ``&#39;``, ``&quot;``) unless ``opts.decode_html`` is off. Raises pydantic.ValidationError."""
    model = PAYLOAD_MODELS[aggregate_type]
    return model.model_validate(_decode(payload) if opts.decode_html else payload)  # type: ignore[return-value]


def _sales_line(amount: Decimal, description: str | None, item_id: str,
                qty: Decimal | None = None, unit_price: Decimal | None = None) -> dict[str, Any]:
    detail: dict[str, Any] = {"ItemRef": {"value": item_id}}
    amount = amount.quantize(CENT, rounding=ROUND_HALF_UP)
    # QBO checks Amount == Qty * UnitPrice (6070): send both only when TimeTracker's numbers agree.
    if qty is not None and unit_price is not None \
            and (qty * unit_price).quantize(CENT, rounding=ROUND_HALF_UP) == amount:
        detail["Qty"] = _money(qty)
        detail["UnitPrice"] = _money(unit_price)
    return {"DetailType": "SalesItemLineDetail", "Amount": _money(amount), "Description": _text(description),
            "SalesItemLineDetail": detail}


def invoice_lines(inv: InvoiceState, item_id: str) -> list[dict[str, Any]]:
    """TimeTracker's ``Invoice.calculate_totals()`` bills items, extra goods and linked expenses (amount plus
    tax): each becomes a line, in that order, so that QBO's subtotal is TimeTracker's.

    TimeTracker recalculates only when the invoice is saved: an admin who edits or deletes a linked expense
    afterwards leaves a stored subtotal that its lines no longer add up to, and the stored figure is the one
    TimeTracker shows and bills. One more line, named as what it is, carries the difference, so QBO's total is
    still TimeTracker's to the cent."""
    if not (inv.items or inv.extra_goods or inv.expenses):
        raise MappingError(
            f"invoice {inv.invoice_number} has no lines (no items, extra goods or linked expenses; total "
            f"{inv.total_amount}): QuickBooks cannot hold an invoice without lines. Add a line in TimeTracker or "
            "cancel the invoice, then replay this dead letter", code="invoice_without_lines")
    lines = [_sales_line(i.total_amount, i.description, item_id, i.quantity, i.unit_price) for i in inv.items]
    lines += [_sales_line(g.total_amount, " - ".join(p for p in (g.name, g.description) if p), item_id,
                          g.quantity, g.unit_price) for g in inv.extra_goods]
    lines += [_sales_line(e.total_amount, " - ".join(p for p in (f"Expense: {e.title}", e.description) if p),
                          item_id) for e in inv.expenses]
    gap = stale_subtotal_gap(inv)
    if gap:
        lines.append(_sales_line(gap, STALE_SUBTOTAL_LINE, item_id))
    return lines


STALE_SUBTOTAL_LINE = "Adjustment: TimeTracker's invoice subtotal, not recalculated since a line changed"


def stale_subtotal_gap(inv: InvoiceState) -> Decimal:
    """TimeTracker's stored subtotal minus what its items, extra goods and linked expenses add up to (0 when
    the invoice was recalculated after its last change, as the app does on every save)."""
    parts = [i.total_amount for i in inv.items] + [g.total_amount for g in inv.extra_goods] + \
        [e.total_amount for e in inv.expenses]
    lines = sum((p.quantize(CENT, rounding=ROUND_HALF_UP) for p in parts), Decimal("0"))
    return inv.subtotal.quantize(CENT, rounding=ROUND_HALF_UP) - lines


def invoice_request(inv: InvoiceState, refs: InvoiceRefs, opts: MappingOptions) -> dict[str, Any]:
    lines = invoice_lines(inv, refs.item_id)
    body: dict[str, Any] = {
        "CustomerRef": {"value": refs.customer_id},
        "DocNumber": _doc_number(inv.invoice_number, "invoice number"),
        "TxnDate": inv.issue_date.isoformat(),
        "DueDate": inv.due_date.isoformat(),
        "Line": lines,
        "PrivateNote": _note(marker("invoice", inv.id, opts.source), inv.notes),
    }
    if inv.client_email:
        body["BillEmail"] = {"Address": inv.client_email}
    # Updates are sparse: a field left out keeps its old value in QBO, so what can go back to empty is always
    # sent (a tax removed in TimeTracker must become 0 in QBO, not stay).
    body["CustomerMemo"] = {"value": _text(inv.terms, 1000) or ""}
    # QBO's TotalAmt = lines + TotalTax: TimeTracker's total less its subtotal is the tax it bills (its
    # tax_amount whenever the invoice was recalculated).
    tax: dict[str, Any] = {"TotalTax": _money(inv.total_amount - inv.subtotal)}
    if refs.tax_code_id:
        tax["TxnTaxCodeRef"] = {"value": refs.tax_code_id}
    body["TxnTaxDetail"] = tax
    if opts.multicurrency and inv.currency_code:
        body["CurrencyRef"] = {"value": inv.currency_code.upper()}
    return body


def payment_type(expense: ExpenseState, opts: MappingOptions) -> str:
    method = (expense.payment_method or "").strip().lower().replace("-", "_").replace(" ", "_")
    return opts.payment_types.get(method, opts.default_payment_type)


def purchase_request(exp: ExpenseState, refs: PurchaseRefs, opts: MappingOptions) -> dict[str, Any]:
    description = _text(" - ".join(p for p in (exp.title, exp.description) if p))
    lines = [{"DetailType": "AccountBasedExpenseLineDetail", "Amount": _money(exp.amount),
              "Description": description,
              "AccountBasedExpenseLineDetail": {"AccountRef": {"value": refs.expense_account_id}}}]
    tax = exp.tax_amount or Decimal("0")
    if tax > 0:
        lines.append({"DetailType": "AccountBasedExpenseLineDetail", "Amount": _money(tax),
                      "Description": f"Tax on {exp.title}"[:TEXT_MAX],
                      "AccountBasedExpenseLineDetail": {"AccountRef": {"value": refs.expense_account_id}}})
    body: dict[str, Any] = {
        "PaymentType": payment_type(exp, opts),
        "AccountRef": {"value": refs.paying_account_id},
        "TxnDate": (exp.payment_date or exp.expense_date).isoformat(),
        "DocNumber": expense_doc_number(exp.id),
        "TotalAmt": _money(exp.amount + tax),
        "Line": lines,
        "PrivateNote": _note(marker("expense", exp.id, opts.source),
                             f"receipt {exp.receipt_number}" if exp.receipt_number else exp.notes),
    }
    if refs.vendor_id:
        body["EntityRef"] = {"value": refs.vendor_id, "type": "Vendor"}
    if opts.multicurrency and exp.currency_code:
        body["CurrencyRef"] = {"value": exp.currency_code.upper()}
    return body


def payment_request(pay: PaymentState, refs: PaymentRefs, opts: MappingOptions) -> dict[str, Any]:
    amount = _money(pay.amount)
    body: dict[str, Any] = {
        "CustomerRef": {"value": refs.customer_id},
        "TotalAmt": amount,
        "TxnDate": pay.payment_date.isoformat(),
        "Line": [{"Amount": amount, "LinkedTxn": [{"TxnId": refs.invoice_qbo_id, "TxnType": "Invoice"}]}],
        "PrivateNote": _note(marker("payment", pay.id, opts.source),
                             " ".join(p for p in (pay.method, pay.notes) if p) or None),
    }
    if pay.reference:
        body["PaymentRefNum"] = pay.reference[:DOC_NUMBER_MAX]
    if refs.deposit_account_id:
        body["DepositToAccountRef"] = {"value": refs.deposit_account_id}
    if opts.multicurrency and pay.currency:
        body["CurrencyRef"] = {"value": pay.currency.upper()}
    return body


def settlement_marker(invoice_id: int, source: str) -> str:
    """The settlement Payment's marker: not a TimeTracker record of its own, so not ``MARKER_RE``'s."""
    return f"ttsync:settlement:{invoice_id}@{source}"


def settlement_request(inv: InvoiceState, amount: Decimal, customer_id: str, invoice_qbo_id: str,
                       opts: MappingOptions) -> dict[str, Any]:
    """The Payment that holds what TimeTracker counts as paid without a payment row (status menu "mark as
    paid": amount_paid = total, no row), so that QBO's Balance equals total_amount - amount_paid."""
    paid_on = inv.payment_date or (inv.updated_at.date() if inv.updated_at else inv.issue_date)
    value = _money(amount)
    body: dict[str, Any] = {
        "CustomerRef": {"value": customer_id},
        "TotalAmt": value,
        "TxnDate": paid_on.isoformat(),
        "Line": [{"Amount": value, "LinkedTxn": [{"TxnId": invoice_qbo_id, "TxnType": "Invoice"}]}],
        "PrivateNote": _note(settlement_marker(inv.id, opts.source),
                             f"marked paid in TimeTracker without a payment record ({inv.invoice_number})"),
    }
    if inv.payment_reference:
        body["PaymentRefNum"] = inv.payment_reference[:DOC_NUMBER_MAX]
    if opts.multicurrency and inv.currency_code:
        body["CurrencyRef"] = {"value": inv.currency_code.upper()}
    return body


def qbo_display_name(name: str) -> str:
    """The DisplayName QBO keeps for a name: without its surrounding blanks (a name of blanks only it refuses,
    Fault 2020), at most 500 characters. "" for a blank name."""
    return _text(name.strip(), 500) or ""


def customer_request(client: ClientState, opts: MappingOptions, display_name: str | None = None,
                     currency: str | None = None) -> dict[str, Any]:
    """A customer's body. ``currency`` (the first invoice's, else ``opts.default_currency``) is sent on create
    only: in a multicurrency company a customer's currency is fixed, and its invoices must be in it."""
    name = qbo_display_name(display_name or client.name)
    if not name:
        raise MappingError(f"client {client.id} has a blank name: a QBO customer needs a DisplayName",
                           code="blank_name")
    body: dict[str, Any] = {
        "DisplayName": name,
        "CompanyName": _text(client.name.strip(), 100),
        "Active": client.status != "inactive",
        "Notes": _text(marker("client", client.id, opts.source)),
    }
    if client.email:
        body["PrimaryEmailAddr"] = {"Address": client.email}
    if client.phone:
        body["PrimaryPhone"] = {"FreeFormNumber": client.phone[:30]}
    if client.contact_person:
        given, _, family = client.contact_person.partition(" ")
        body["GivenName"] = given[:100]
        if family:
            body["FamilyName"] = family[:100]
    if client.address:
        lines = [ln.strip() for ln in client.address.splitlines() if ln.strip()][:5]
        body["BillAddr"] = {f"Line{i + 1}": ln[:500] for i, ln in enumerate(lines)}
    if currency and opts.multicurrency:
        body["CurrencyRef"] = {"value": currency.upper()}
    return body


def vendor_request(name: str) -> dict[str, Any]:
    return {"DisplayName": _text(name, 500), "CompanyName": _text(name, 100)}


def request_id(event_id: uuid.UUID | str, operation: str, body: Any = None, generation: str = "") -> str:
    """QBO requestid for one write: the same event, operation and body always give the same id (so a retry
    is recognised), a changed body (say, after an operator fixed a mapping) a new one.

    QBO answers a repeated requestid with its first response, a Fault included. ``generation`` names the
    delivery (retry tier, dead-letter replay): a retry after a Fault must be able to succeed, while a redelivery
    of the same delivery (a crash after the write) still finds the first answer."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]
    name = f"{event_id}:{operation}:{digest}" + (f":{generation}" if generation else "")
    return str(uuid.uuid5(REQUESTID_NAMESPACE, name))


# Where TimeTracker's own QuickBooks connector left the QBO id of what it created (timetracker-model.md §3):
# ``integration_metadata["quickbooks"][<key>]`` through get/set_integration_ref, or ``["quickbooks_id"]`` as the
# connector's own code writes it.
LEGACY_ID_KEYS = {"invoice": ("invoice_id", "id"), "expense": ("purchase_id", "expense_id", "id")}


def legacy_qbo_id(aggregate_type: str, payload: dict[str, Any]) -> str | None:
    """The QBO id TimeTracker's old connector recorded for this record, if any."""
    meta = payload.get("integration_metadata")
    if not isinstance(meta, dict) or aggregate_type not in LEGACY_ID_KEYS:
        return None
    section = meta.get("quickbooks")
    candidates: list[Any] = []
    if isinstance(section, dict):
        candidates += [section.get(k) for k in LEGACY_ID_KEYS[aggregate_type]]
    candidates.append(meta.get("quickbooks_id"))
    # QBO ids are digits: anything else (a name, a URL, a query fragment) is not an id to read.
    found = next((str(c).strip() for c in candidates if isinstance(c, (str, int)) and str(c).strip().isdigit()),
                 None)
    return found


def legacy_match(candidates: list[dict[str, Any]], totals: set[Decimal], *, lone: bool = False
                 ) -> tuple[dict[str, Any] | None, list[str]]:
    """(the one QBO entity among ``candidates`` that the old connector made for a record, the ids it could not
    choose between). Never one ttsync wrote (it carries a marker). One of the totals the connector could have
    sent (it left tax out) decides. With ``lone`` (the candidates already share the customer and the date), a
    single candidate is taken when no total fits: the record changed since. A guess never merges two records:
    when several fit, nothing is taken and their ids come back for the operator."""
    unmarked = [c for c in candidates if "ttsync:" not in (c.get("PrivateNote") or "")]
    wanted = {t.quantize(CENT) for t in totals}
    fits = [c for c in unmarked if Decimal(str(c.get("TotalAmt", "0"))).quantize(CENT) in wanted]
    if len(fits) == 1:
        return fits[0], []
    if len(fits) > 1:
        return None, [str(c.get("Id")) for c in fits]
    if lone and len(unmarked) == 1:
        return unmarked[0], []
    return None, [str(c.get("Id")) for c in unmarked] if lone else []
