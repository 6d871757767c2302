"""The consumer's exactly-once rules on fakes: the in-memory QBO (tests.fakes.InMemoryQbo, the sandbox's company
model in-process) and a SQLite state store. Seconds, no broker, no HTTP; the chaos suite proves the same on real
services."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from consumer.errors import DependencyNotReady, MalformedEvent, QboUnavailable
from consumer.writes import Operation, Result, Write
from tests.consumer_harness import FakeParts
from tests.sandbox.test_books import CLIENT, ev, invoice


@pytest.fixture
def strict_parts(tmp_path: Any) -> Iterator[FakeParts]:
    """QBO answering a repeated requestid with Fault 600 instead of replaying its first answer."""
    p = FakeParts(tmp_path, duplicate_requestid_mode="fault")
    yield p
    p.close()


# -- references: a create whose answer was lost ----------------------------------------------------------

def test_a_customer_made_after_the_bulk_read_is_adopted_not_doubled(parts: FakeParts) -> None:
    """A backlog's bulk read of names (#19) goes stale when someone makes a customer meanwhile: the name read as
    absent is created, QBO refuses it (6240), and the customer found by a query is the one."""
    parts.resolver.prefetch_customers(["Acme", "  Acme  "])
    parts.qbo.create("Customer", {"DisplayName": "Acme"}, "made-by-hand")
    customer_id = parts.resolver.customer(7, None, "Acme", None)
    assert parts.qbo.calls.count(("query", "Customer")) == 2  # the bulk read (one name), the lookup after 6240
    assert [c["Id"] for c in parts.entities("Customer")] == [customer_id]


def test_a_customer_create_answered_600_after_a_lost_answer_is_adopted(strict_parts: FakeParts) -> None:
    """The name belongs to a vendor, so the customer is created as "<name> (customer)"; that answer is lost. The
    retry looks for the plain name (not there), is refused it again (6240), sends the suffixed create with the
    same requestid and gets Fault 600: it must find the customer, not dead-letter the invoice."""
    p = strict_parts
    p.qbo.create("Vendor", {"DisplayName": "Acme"}, "someone-else")
    p.qbo.lose_answer("create", "Customer", nth=2)  # the plain name is refused (6240), the suffixed one is lost
    with pytest.raises(QboUnavailable):
        p.resolver.customer(7, None, "Acme", None)
    customer_id = p.resolver.customer(7, None, "Acme", None)
    customers = p.entities("Customer")
    assert [c["DisplayName"] for c in customers] == ["Acme (customer)"] and customers[0]["Id"] == customer_id


def test_a_vendor_create_answered_600_after_a_lost_answer_is_adopted(strict_parts: FakeParts) -> None:
    p = strict_parts
    p.qbo.create("Customer", {"DisplayName": "Hotel Kranz"}, "someone-else")
    p.qbo.lose_answer("create", "Vendor", nth=2)
    with pytest.raises(QboUnavailable):
        p.resolver.vendor("Hotel Kranz")
    vendor_id = p.resolver.vendor("Hotel Kranz")
    assert [(v["Id"], v["DisplayName"]) for v in p.entities("Vendor")] == [(vendor_id, "Hotel Kranz (vendor)")]


def test_item_and_account_creates_answered_600_are_found_by_name(strict_parts: FakeParts,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """QBO's query can lag a write: the first lookup misses the item a lost attempt made, the create is refused
    with Fault 600, the second lookup finds it."""
    p = strict_parts
    p.resolver.config = dataclasses.replace(p.resolver.config, auto_create_items=True, default_item="Consulting")
    p.qbo.lose_answer("create", "Item")
    with pytest.raises(QboUnavailable):
        p.resolver.item()
    real_find = p.resolver._find
    misses = iter([True])
    monkeypatch.setattr(p.resolver, "_find", lambda *a: None if next(misses, False) else real_find(*a))
    item_id = p.resolver.item()
    assert [(i["Id"], i["Name"]) for i in p.entities("Item") if i["Name"] == "Consulting"] == [(item_id, "Consulting")]

    p.resolver.config = dataclasses.replace(p.resolver.config, auto_create_accounts=True)
    p.qbo.lose_answer("create", "Account")
    with pytest.raises(QboUnavailable):
        p.resolver.expense_account("Kiln Firing")
    misses = iter([True])
    account_id = p.resolver.expense_account("Kiln Firing")
    assert [a["Id"] for a in p.entities("Account") if a["Name"] == "Kiln Firing"] == [account_id]


# -- the exactly-once rules --------------------------------------------------------------------------------

def test_a_redelivered_event_is_a_duplicate_and_writes_nothing(parts: FakeParts) -> None:
    event = ev("invoice", invoice(), 1, "created")
    assert parts.applier.apply(event).result is Result.CREATED
    calls = len(parts.qbo.calls)
    assert parts.applier.apply(event).result is Result.DUPLICATE
    assert len(parts.qbo.calls) == calls and len(parts.entities("Invoice")) == 1


def test_an_older_version_is_skipped(parts: FakeParts) -> None:
    parts.applier.apply(ev("invoice", invoice(), 2, "created"))
    outcome = parts.applier.apply(ev("invoice", invoice(items=[("1.00", "1.00")]), 1))
    assert outcome.result is Result.SKIPPED
    assert parts.entities("Invoice")[0]["TotalAmt"] == 240


def test_a_crash_between_the_write_and_its_record_adopts_instead_of_creating_twice(parts: FakeParts) -> None:
    event = ev("invoice", invoice(), 1, "created")
    parts.applier.apply(ev("client", CLIENT, 1, "created"))
    parts.qbo.lose_answer("create", "Invoice")
    with pytest.raises(QboUnavailable):
        parts.applier.apply(event)
    assert parts.store.mapped("invoice", "1").pending_requestid  # type: ignore[union-attr]
    assert parts.applier.apply(event).result is Result.ADOPTED
    assert len(parts.entities("Invoice")) == 1 and parts.writes("create", "Invoice") == 1


def test_a_crash_between_the_write_and_its_record_adopts_under_fault_600(strict_parts: FakeParts) -> None:
    """The pending create's lookup misses (QBO's query lags): the create is sent again with its requestid and
    answered 600; the lookup after it finds the invoice."""
    p = strict_parts
    event = ev("invoice", invoice(), 1, "created")
    p.qbo.lose_answer("create", "Invoice")
    with pytest.raises(QboUnavailable):
        p.applier.apply(event)
    real_query = p.qbo.query
    misses = iter([True])
    p.qbo.query = lambda sql, entity="": [] if entity == "Invoice" and next(misses, False) \
        else real_query(sql, entity)  # type: ignore[method-assign]
    assert p.applier.apply(event).result is Result.ADOPTED
    assert len(p.entities("Invoice")) == 1


def test_a_pending_create_is_found_past_the_first_hundred_rows_of_its_lookup(parts: FakeParts) -> None:
    """Chaos, consumer kill -9: payment 90 was created by a batch whose answer the crash lost; its refund then
    looked for it among the payments of its date, got QBO's first 100 of 163, and skipped the refund as "never in
    QBO". The payment stayed live, and its invoice's next update was refused for ever."""
    def pay(n: int, status: str = "completed") -> dict[str, Any]:
        return {"id": n, "invoice_id": 1, "amount": "1.00", "payment_date": "2026-11-20",
                "method": "bank_transfer", "status": status}

    parts.applier.apply(ev("client", CLIENT, 1, "created"))
    parts.applier.apply(ev("invoice", invoice(), 1, "created"))
    for n in range(1, 106):  # a busy day: more payments of that date than one page of a query holds
        parts.applier.apply(ev("payment", pay(n), 1, "created"))
    parts.qbo.lose_answer("create", "Payment")
    with pytest.raises(QboUnavailable):
        parts.applier.apply(ev("payment", pay(200), 1, "created"))
    assert len(parts.entities("Payment")) == 106
    outcome = parts.applier.apply(ev("payment", pay(200, "refunded"), 2))
    assert outcome.result is Result.VOIDED
    assert len([p for p in parts.entities("Payment") if not p.get("Voided")]) == 105


def test_a_payment_before_its_invoice_waits(parts: FakeParts) -> None:
    pay = {"id": 5, "invoice_id": 1, "amount": "100.00", "payment_date": "2026-11-20", "method": "bank_transfer",
           "status": "completed"}
    with pytest.raises(DependencyNotReady):
        parts.applier.apply(ev("payment", pay, 1, "created"))
    parts.applier.apply(ev("invoice", invoice(), 1, "created"))
    assert parts.applier.apply(ev("payment", pay, 1, "created")).result is Result.CREATED


def test_an_operator_override_is_read_once_per_event_and_applies_from_the_next_event(
        parts: FakeParts, monkeypatch: pytest.MonkeyPatch) -> None:
    """The overrides are read together once per event (an invoice looks up its customer's and its item's), and a
    ``map set`` between two events applies to the second: nothing holds them longer."""
    parts.applier.apply(ev("client", CLIENT, 1, "created"))
    parts.applier.apply(ev("invoice", invoice(invoice_id=1), 1, "created"))
    other = parts.qbo.create("Customer", {"DisplayName": "Billing Office", "CurrencyRef": {"value": "EUR"}},
                             "made-by-hand")
    parts.store.set_override("customer", " 1 ", str(other["Id"]))
    reads: list[int] = []
    real_read = parts.store.overrides
    monkeypatch.setattr(parts.store, "overrides", lambda: reads.append(1) or real_read())
    assert parts.applier.apply(ev("invoice", invoice(invoice_id=2), 1, "created")).result is Result.CREATED
    customers = {i["DocNumber"]: i["CustomerRef"]["value"] for i in parts.entities("Invoice")}
    assert customers["INV-0002"] == str(other["Id"]) != customers["INV-0001"]
    assert reads == [1]
    assert parts.store.delete_override("customer", "1") == 1
    parts.applier.apply(ev("invoice", invoice(invoice_id=3), 1, "created"))
    assert {i["DocNumber"]: i["CustomerRef"]["value"] for i in parts.entities("Invoice")}["INV-0003"] \
        == customers["INV-0001"]


def test_the_preflight_reads_the_overrides_once_and_checks_an_overridden_category(
        parts: FakeParts, monkeypatch: pytest.MonkeyPatch) -> None:
    """``map check`` lists a category that only an operator's mapping names, with the account it maps to, and
    reads the mappings once for the whole check (it read them twice: once for the list, once for the lookups)."""
    account = parts.qbo.create("Account", {"Name": "Equipment Rental", "AccountType": "Expense"}, "by-hand")
    parts.store.set_override("expense_account", "equipment rental", str(account["Id"]))
    reads: list[int] = []
    real_read = parts.store.overrides
    monkeypatch.setattr(parts.store, "overrides", lambda: reads.append(1) or real_read())
    rows = {r.key: r for r in parts.resolver.preflight([], [])}
    assert rows["equipment rental"].qbo_id == str(account["Id"])
    assert reads == [1]


def test_a_batch_item_refused_falls_back_to_the_single_path(parts: FakeParts) -> None:
    parts.applier.apply(ev("client", CLIENT, 1, "created"))
    prepared = [parts.applier.prepare(ev("invoice", invoice(invoice_id=n), 1, "created")) for n in (1, 2, 3)]
    writes = [w for w in prepared if isinstance(w, Write)]
    assert len(writes) == 3 and all(w.batchable and w.operation is Operation.CREATE for w in writes)
    parts.qbo.create("Invoice", {**writes[1].body}, "a-person-made-it")  # INV-0002 is taken: 6140 in the batch
    outcomes = parts.applier.execute_batch(writes)
    assert [o.result if o else None for o in outcomes] == [Result.CREATED, None, Result.CREATED]
    assert parts.applier.execute(writes[1]).result is Result.ADOPTED  # the single path recovers it
    assert sorted(i["DocNumber"] for i in parts.entities("Invoice")) == ["INV-0001", "INV-0002", "INV-0003"]


def test_a_batch_that_fails_whole_is_safe_to_apply_one_by_one(parts: FakeParts) -> None:
    writes = [w for n in (1, 2) if isinstance(w := parts.applier.prepare(ev("invoice", invoice(invoice_id=n), 1,
                                                                           "created")), Write)]
    parts.qbo.lose_answer("batch", "Batch")
    with pytest.raises(QboUnavailable):
        parts.applier.execute_batch(writes)
    assert [parts.applier.apply(w.event).result for w in writes] == [Result.ADOPTED, Result.ADOPTED]
    assert len(parts.entities("Invoice")) == 2


def test_voiding_an_invoice_voids_its_settlement_and_the_invoice(parts: FakeParts) -> None:
    """The settlement's void and the invoice's belong to one event, here both at SyncToken 0 in the entity map:
    their requestids must differ, or QBO answers the invoice's void with the settlement's answer."""
    parts.applier.apply(ev("invoice", invoice("paid", amount_paid="240.00"), 1, "created"))
    assert parts.store.mapped("settlement", "1").sync_token == parts.store.mapped("invoice", "1").sync_token  # type: ignore[union-attr]
    assert parts.applier.apply(ev("invoice", invoice("cancelled", amount_paid="240.00"), 2)).result is Result.VOIDED
    [inv], [settlement] = parts.entities("Invoice"), parts.entities("Payment")
    assert inv["TotalAmt"] == 0 and "Voided" in inv.get("PrivateNote", "")
    assert settlement["TotalAmt"] == 0


def test_an_unknown_aggregate_type_is_malformed(parts: FakeParts) -> None:
    event = ev("invoice", invoice(), 1).model_copy(update={"aggregate_type": "timesheet"})
    with pytest.raises(MalformedEvent):
        parts.applier.apply(event)


# -- taking over from TimeTracker's old connector ---------------------------------------------------------

def test_the_old_connectors_entities_are_read_in_bulk_and_each_adopted_once(parts: FakeParts) -> None:
    """Adoption cost one QBO query per create (a backfill drained at half speed with it). The candidates are read
    a year of TxnDate at a time, matched in memory, and one adopted leaves the pool."""
    parts.applier.apply(ev("client", CLIENT, 1, "created"))
    [customer] = parts.entities("Customer")
    [item] = [i for i in parts.entities("Item") if i["Name"] == "Services"]
    old = {}
    for n in range(1, 11):  # what the old connector made: no DocNumber, no marker, no tax; the total tells them apart
        amount = f"{100 + n}.00"
        old[n] = parts.qbo.create("Invoice", {
            "CustomerRef": {"value": customer["Id"]}, "TxnDate": "2026-11-02",
            "Line": [{"Amount": amount, "DetailType": "SalesItemLineDetail",
                      "SalesItemLineDetail": {"ItemRef": {"value": item["Id"]}, "Qty": 1, "UnitPrice": amount}}]},
            f"old-{n}")["Id"]
    before = parts.writes("query", "Invoice")
    for n in range(1, 11):
        out = parts.applier.apply(ev("invoice", invoice(items=[("1.00", f"{100 + n}.00")], invoice_id=n), 1,
                                     "snapshot"))
        assert (out.result, out.qbo_id) == (Result.ADOPTED, old[n])
    assert parts.writes("query", "Invoice") - before == 1  # one page for the year, not one query per create
    # an eleventh record of the same customer, date and a total already taken: created, never a second adoption
    twin = parts.applier.apply(ev("invoice", invoice(items=[("1.00", "101.00")], invoice_id=11), 1, "snapshot"))
    assert twin.result is Result.CREATED and len(parts.entities("Invoice")) == 11


def test_an_adoption_tried_again_finds_its_candidate_and_no_other_record_takes_it(parts: FakeParts) -> None:
    """The pool claims a candidate for the record adopting it. An adoption that failed (a stale SyncToken in a
    batch) is prepared again: it must find the same entity, not create a twin of the old connector's."""
    from consumer.writes import Write

    parts.applier.apply(ev("client", CLIENT, 1, "created"))
    [customer] = parts.entities("Customer")
    [item] = [i for i in parts.entities("Item") if i["Name"] == "Services"]
    old = parts.qbo.create("Invoice", {
        "CustomerRef": {"value": customer["Id"]}, "TxnDate": "2026-11-02",
        "Line": [{"Amount": "150.00", "DetailType": "SalesItemLineDetail",
                  "SalesItemLineDetail": {"ItemRef": {"value": item["Id"]}, "Qty": 1, "UnitPrice": "150.00"}}]},
        "old-1")
    event = ev("invoice", invoice(items=[("1.00", "150.00")], invoice_id=1), 1, "snapshot")
    first, again = parts.applier.prepare(event), parts.applier.prepare(event)
    assert isinstance(first, Write) and isinstance(again, Write)
    assert (first.operation, first.qbo_id) == (again.operation, again.qbo_id) == (Operation.ADOPT, old["Id"])
    assert first.batchable  # an adoption is a sparse update: it may go in a batch request
    other = parts.applier.prepare(ev("invoice", invoice(items=[("1.00", "150.00")], invoice_id=2), 1, "snapshot"))
    assert isinstance(other, Write) and other.operation is Operation.CREATE
