"""The books agree with TimeTracker as the real app leaves its rows (timetracker-model.md §6): each test
applies events shaped like the real app's through the consumer's applier into a fresh sandbox company and
compares QBO with TimeTracker to the cent (no broker; the same checks run on the migrated schema and real
services in tests/integration/test_real_timetracker.py)."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest

from consumer.errors import MappingError, MissingMapping
from consumer.references import DEFAULT_EXPENSE_ACCOUNTS, TIMETRACKER_CATEGORIES, TIMETRACKER_PAYMENT_METHODS
from schemas.events import EventEnvelope
from tests.sandbox.test_properties import Harness

EXPENSE_TYPES = {"Expense", "Other Expense", "Cost of Goods Sold"}


@pytest.fixture
def h(tmp_path: Any) -> Any:
    harness = Harness(str(tmp_path))
    yield harness
    harness.close()


def ev(agg: str, payload: dict[str, Any], version: int, action: str = "updated") -> EventEnvelope:
    return EventEnvelope(event_id=uuid.uuid4(), event_type=f"{agg}.{action}", aggregate_type=agg,  # type: ignore[arg-type]
                         aggregate_id=str(payload["id"]), aggregate_version=version,
                         occurred_at=dt.datetime.now(dt.UTC), payload=payload)


CLIENT = {"id": 1, "name": "O'Brien &amp; Sons &quot;Ltd&quot;", "email": "ap@obrien.test", "status": "active"}


def invoice(status: str = "sent", *, items: list[tuple[str, str]] = (("2.00", "120.00"),),  # type: ignore[assignment]
            goods: list[tuple[str, str]] = (), expenses: list[tuple[str, str]] = (), tax_rate: str = "0",
            amount_paid: str = "0", payments_completed: str = "0.00", emails_sent: int = 0,
            invoice_id: int = 1, client: dict[str, Any] | None = None) -> dict[str, Any]:
    """An invoice row as TimeTracker's calculate_totals() leaves it."""
    its = [{"id": n + 1, "invoice_id": invoice_id, "description": f"Work {n}", "quantity": q, "unit_price": p,
            "total_amount": str((Decimal(q) * Decimal(p)).quantize(Decimal("0.01")))} for n, (q, p) in enumerate(items)]
    gds = [{"id": n + 1, "invoice_id": invoice_id, "name": f"Cable &amp; plug {n}", "category": "product",
            "quantity": q, "unit_price": p, "total_amount": str((Decimal(q) * Decimal(p)).quantize(Decimal("0.01")))}
           for n, (q, p) in enumerate(goods)]
    exps = [{"id": 100 + n, "invoice_id": invoice_id, "title": f"Hotel {n}", "category": "accommodation",
             "amount": a, "tax_amount": t} for n, (a, t) in enumerate(expenses)]
    subtotal = sum((Decimal(i["total_amount"]) for i in its), Decimal("0")) + \
        sum((Decimal(g["total_amount"]) for g in gds), Decimal("0")) + \
        sum((Decimal(e["amount"]) + Decimal(e["tax_amount"]) for e in exps), Decimal("0"))
    tax = (subtotal * Decimal(tax_rate) / 100).quantize(Decimal("0.01"))
    c = client or CLIENT
    return {"id": invoice_id, "invoice_number": f"INV-{invoice_id:04d}", "project_id": None, "client_id": c["id"],
            "client_name": c["name"], "issue_date": "2026-11-02", "due_date": "2026-11-16", "status": status,
            "subtotal": str(subtotal), "tax_rate": tax_rate, "tax_amount": str(tax),
            "total_amount": str(subtotal + tax),
            "currency_code": "EUR", "amount_paid": amount_paid,
            "payment_status": "fully_paid" if Decimal(amount_paid) >= subtotal + tax > 0 else "unpaid",
            "items": its, "extra_goods": gds, "expenses": exps, "client": c,
            "payments_completed": payments_completed, "emails_sent": emails_sent}


def money(v: Any) -> Decimal:
    return Decimal(str(v)).quantize(Decimal("0.01"))


def the_invoice(h: Any) -> dict[str, Any]:
    (inv,) = h.qbo("Invoice")
    return inv


def test_extra_goods_and_linked_expenses_are_in_the_total(h: Any) -> None:
    # Seen on the real app: 2 h x 120 + 3 x 15.50 extra good = 286.50; 500 + a linked 55.00 expense = 555.00.
    a = invoice(goods=[("3", "15.50")])
    assert a["total_amount"] == "286.50"
    assert h.applier.apply(ev("invoice", a, 1, "created")).result == "created"
    assert money(the_invoice(h)["TotalAmt"]) == Decimal("286.50")
    b = invoice(items=[("1", "500.00")], expenses=[("50.00", "5.00")], tax_rate="19", invoice_id=2)
    h.applier.apply(ev("invoice", b, 1, "created"))
    stored = next(i for i in h.qbo("Invoice") if i["DocNumber"] == "INV-0002")
    assert money(stored["TotalAmt"]) == money(b["total_amount"]) == Decimal("660.45")
    assert money(stored["Balance"]) == Decimal("660.45")
    descriptions = [ln.get("Description") for ln in stored["Line"] if ln["DetailType"] == "SalesItemLineDetail"]
    assert descriptions == ["Work 0", "Expense: Hotel 0"]


def test_an_invoice_of_only_extra_goods_syncs_and_a_truly_empty_one_is_refused_with_a_reason(h: Any) -> None:
    only_goods = invoice(items=[], goods=[("2", "9.99")])
    assert h.applier.apply(ev("invoice", only_goods, 1, "created")).result == "created"
    assert money(the_invoice(h)["TotalAmt"]) == Decimal("19.98")
    assert the_invoice(h)["Line"][0]["Description"] == "Cable & plug 0"
    with pytest.raises(MappingError, match="no lines") as err:
        h.applier.apply(ev("invoice", invoice(items=[], invoice_id=2), 1, "created"))
    assert err.value.code == "invoice_without_lines"


def test_a_subtotal_left_stale_by_an_admin_edit_still_gives_timetrackers_total(h: Any) -> None:
    # TimeTracker recalculates on save only: an admin edits the linked expense (50 + 5 -> 60 + 5) afterwards,
    # and the invoice keeps showing and billing its stored 555.00.
    inv = invoice(items=[("1", "500.00")], expenses=[("50.00", "5.00")])
    inv["expenses"][0]["amount"] = "60.00"
    assert inv["total_amount"] == "555.00"
    assert h.applier.apply(ev("invoice", inv, 1, "created")).result == "created"
    stored = the_invoice(h)
    assert money(stored["TotalAmt"]) == Decimal("555.00") and money(stored["Balance"]) == Decimal("555.00")
    adjustment = [ln for ln in stored["Line"] if "Adjustment" in (ln.get("Description") or "")]
    assert [money(ln["Amount"]) for ln in adjustment] == [Decimal("-10.00")]


def test_a_draft_the_daily_job_made_overdue_stays_out_of_qbo(h: Any) -> None:
    assert h.applier.apply(ev("invoice", invoice("draft"), 1, "created")).result == "skipped"
    out = h.applier.apply(ev("invoice", invoice("overdue"), 2))
    assert out.result == "skipped" and "without ever being issued" in out.reason and h.qbo("Invoice") == []
    # Sent by e-mail before ttsync saw it, or money received against it: it is a real receivable.
    assert h.applier.apply(ev("invoice", invoice("overdue", emails_sent=1), 3)).result == "created"
    paid = invoice("overdue", amount_paid="100.00", invoice_id=2)
    assert h.applier.apply(ev("invoice", paid, 1)).result == "created"


def test_marked_paid_without_a_payment_row_settles_the_balance_and_undoing_it_voids(h: Any) -> None:
    h.applier.apply(ev("invoice", invoice("sent"), 1, "created"))
    assert money(the_invoice(h)["Balance"]) == Decimal("240.00")
    # Status menu "mark as paid": amount_paid = total, no payments row.
    h.applier.apply(ev("invoice", invoice("paid", amount_paid="240.00"), 2))
    assert money(the_invoice(h)["Balance"]) == Decimal("0.00")
    (settlement,) = h.qbo("Payment")
    assert money(settlement["TotalAmt"]) == Decimal("240.00") and "ttsync:settlement:1@" in settlement["PrivateNote"]
    # Redelivered: nothing new.
    h.applier.apply(ev("invoice", invoice("paid", amount_paid="240.00"), 2))
    assert len(h.qbo("Payment")) == 1
    # A refund moves it back to sent with less paid: the balance follows, the settlement shrinks.
    h.applier.apply(ev("invoice", invoice("sent", amount_paid="40.00"), 3))
    assert money(the_invoice(h)["Balance"]) == Decimal("200.00")
    # Undone entirely: the settlement is voided and the full balance is open again.
    h.applier.apply(ev("invoice", invoice("sent", amount_paid="0"), 4))
    assert money(the_invoice(h)["Balance"]) == Decimal("240.00")
    assert all(money(p["TotalAmt"]) == 0 for p in h.qbo("Payment"))


def test_a_real_payment_row_is_not_counted_twice(h: Any) -> None:
    h.applier.apply(ev("invoice", invoice("sent"), 1, "created"))
    pay = {"id": 5, "invoice_id": 1, "amount": "100.00", "payment_date": "2026-11-20", "method": "bank_transfer",
           "status": "completed"}
    h.applier.apply(ev("payment", pay, 1, "created"))
    h.applier.apply(ev("invoice", invoice("sent", amount_paid="100.00", payments_completed="100.00"), 2))
    assert money(the_invoice(h)["Balance"]) == Decimal("140.00") and len(h.qbo("Payment")) == 1


def expense(n: int, category: str, method: str, *, vendor: str | None = "Deutsche Bahn") -> dict[str, Any]:
    return {"id": n, "user_id": 1, "title": "Trip &amp; stay", "category": category, "amount": "100.00",
            "tax_amount": "19.00", "currency_code": "EUR", "payment_method": method, "status": "approved",
            "expense_date": "2026-11-03", "vendor": vendor}


def test_every_category_and_payment_method_lands_on_an_account_of_the_right_type(h: Any) -> None:
    accounts = {a["Id"]: a for a in h.qbo("Account")}
    n = 0
    for category in TIMETRACKER_CATEGORIES:
        for method in TIMETRACKER_PAYMENT_METHODS:
            n += 1
            assert h.applier.apply(ev("expense", expense(n, category, method), 1, "created")).result == "created"
    purchases = h.qbo("Purchase")
    assert len(purchases) == n
    for p in purchases:
        paying = accounts[p["AccountRef"]["value"]]
        assert paying["AccountType"] == ("Credit Card" if p["PaymentType"] == "CreditCard" else "Bank")
        for line in p["Line"]:
            booked = accounts[line["AccountBasedExpenseLineDetail"]["AccountRef"]["value"]]
            assert booked["AccountType"] in EXPENSE_TYPES, (p["DocNumber"], booked)
        assert money(p["TotalAmt"]) == Decimal("119.00")
    services = next(p for p in purchases if p["DocNumber"] == f"TT-EXP-{7 * 6 + 1}")
    line_account = accounts[services["Line"][0]["AccountBasedExpenseLineDetail"]["AccountRef"]["value"]]
    assert line_account["Name"] == DEFAULT_EXPENSE_ACCOUNTS["services"] != "Services"


def test_a_category_mapped_to_an_income_account_is_refused_not_booked(h: Any) -> None:
    h.applier.resolver.config.expense_accounts["services"] = "Services"  # the Income account of that name
    with pytest.raises(MissingMapping, match="Income") as err:
        h.applier.apply(ev("expense", expense(1, "services", "cash"), 1, "created"))
    assert err.value.code == "wrong_account_type" and h.qbo("Purchase") == []
    h.applier.resolver.config.expense_accounts["exotic"] = "No Such Account"
    with pytest.raises(MissingMapping, match="QBO has no account 'No Such Account'") as missing:
        h.applier.apply(ev("expense", expense(2, "exotic", "cash"), 1, "created"))
    assert missing.value.code == "missing_account"


def test_bleach_escaped_names_arrive_exactly(h: Any) -> None:
    h.applier.apply(ev("client", CLIENT, 1, "created"))
    muller = {"id": 2, "name": "Müller &amp; Söhne GmbH", "status": "active"}
    h.applier.apply(ev("client", muller, 1, "created"))
    names = sorted(c["DisplayName"] for c in h.qbo("Customer"))
    assert names == ["Müller & Söhne GmbH", "O'Brien & Sons \"Ltd\""]
    h.applier.apply(ev("invoice", invoice(goods=[("1", "5.00")]), 1, "created"))
    assert the_invoice(h)["Line"][1]["Description"] == "Cable & plug 0"
    h.applier.apply(ev("expense", expense(1, "travel", "cash", vendor="Kaffee &amp; Kuchen"), 1, "created"))
    assert [v["DisplayName"] for v in h.qbo("Vendor")] == ["Kaffee & Kuchen"]


def test_customers_get_the_client_currency_and_qbo_holds_transactions_to_it(h: Any) -> None:
    h.applier.apply(ev("client", CLIENT, 1, "created"))
    (customer,) = h.qbo("Customer")
    assert customer["CurrencyRef"]["value"] == "EUR"  # TimeTracker's default currency, not QBO's home USD
    h.applier.apply(ev("invoice", invoice(), 1, "created"))
    assert the_invoice(h)["CurrencyRef"]["value"] == "EUR"
    usd = {**invoice(invoice_id=2), "currency_code": "USD"}
    with pytest.raises(Exception, match="customer's currency"):
        h.applier.apply(ev("invoice", usd, 1, "created"))


def test_a_backlog_batch_never_leaves_a_marked_paid_invoice_without_its_settlement(h: Any) -> None:
    from consumer.writes import Write

    planned = h.applier.prepare(ev("invoice", invoice("sent"), 1, "created"))
    assert isinstance(planned, Write) and planned.batchable  # an ordinary create goes into a batch
    paid = h.applier.prepare(ev("invoice", invoice("paid", amount_paid="240.00", invoice_id=2), 1, "created"))
    assert isinstance(paid, Write) and not paid.batchable  # written alone, with its settlement
    assert h.applier.execute(paid).result == "created"
    (inv,) = h.qbo("Invoice")
    assert money(inv["Balance"]) == 0 and len(h.qbo("Payment")) == 1


def test_a_settlement_waits_for_a_refunded_payments_void_and_is_never_lost(h: Any) -> None:
    from consumer.errors import DependencyNotReady

    h.applier.apply(ev("invoice", invoice("sent"), 1, "created"))
    pay = {"id": 5, "invoice_id": 1, "amount": "240.00", "payment_date": "2026-11-20", "status": "completed"}
    h.applier.apply(ev("payment", pay, 1, "created"))
    h.applier.apply(ev("invoice", invoice("paid", amount_paid="240.00", payments_completed="240.00"), 2))
    # Refunded, then marked paid from the status menu; the invoice's partition is ahead of the payment's.
    marked = ev("invoice", invoice("paid", amount_paid="240.00", payments_completed="0.00"), 4)
    with pytest.raises(DependencyNotReady):
        h.applier.apply(marked)
    h.applier.apply(ev("payment", {**pay, "status": "refunded"}, 2))
    assert h.applier.apply(marked, "retry-1").result == "updated"  # from the retry topic: not a duplicate
    assert money(the_invoice(h)["Balance"]) == 0
    assert sorted(money(p["TotalAmt"]) for p in h.qbo("Payment")) == [Decimal("0"), Decimal("240.00")]


def test_a_cancelled_invoice_waits_for_its_refunded_payments_void(h: Any) -> None:
    from consumer.errors import DependencyNotReady

    h.applier.apply(ev("invoice", invoice("sent"), 1, "created"))
    pay = {"id": 5, "invoice_id": 1, "amount": "100.00", "payment_date": "2026-11-20", "status": "completed"}
    h.applier.apply(ev("payment", pay, 1, "created"))
    cancel = ev("invoice", invoice("cancelled"), 3)
    with pytest.raises(DependencyNotReady):
        h.applier.apply(cancel)
    h.applier.apply(ev("payment", {**pay, "status": "refunded"}, 2))
    assert h.applier.apply(cancel, "retry-1").result == "voided"


def test_a_cancel_after_a_create_whose_answer_was_lost_voids_what_reached_qbo(h: Any) -> None:
    """v1's create reached QBO but its answer was lost (v1 waits in a retry topic); v2 cancels the invoice."""
    from consumer.mapping import InvoiceRefs, invoice_request, readable_state

    sent = invoice("sent")
    customer = h.applier.resolver.customer(1, None, "Acme", None, currency="EUR")
    h.applier.store.mark_pending("invoice", "1", "lost-answer")
    body = invoice_request(readable_state("invoice", sent, h.applier.options),
                           InvoiceRefs(customer, h.applier.resolver.item()), h.applier.options)
    h.applier.qbo.create("Invoice", body, "lost-answer")  # the write that happened
    assert h.applier.apply(ev("invoice", invoice("cancelled"), 2)).result == "voided"
    assert the_invoice(h)["Voided"] is True
    assert h.applier.apply(ev("invoice", sent, 1, "created")).result == "skipped"  # back from its retry topic


def test_a_cancel_after_a_create_that_never_reached_qbo_is_skipped(h: Any) -> None:
    h.applier.store.mark_pending("invoice", "1", "never-sent")
    assert h.applier.apply(ev("invoice", invoice("cancelled"), 2)).result == "skipped"
    assert h.qbo("Invoice") == [] and h.applier.store.mapped("invoice", "1").pending_requestid is None
