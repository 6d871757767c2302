"""Property tests (hypothesis): the mapping for any valid record is accepted by the sandbox, and any order,
duplication or replay of an aggregate's events ends with QBO holding its latest version."""

from __future__ import annotations

import datetime as dt
import html
import uuid
from decimal import Decimal
from typing import Any

import requests
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from producer import migrate
from producer.database import make_engine
from schemas.events import EventEnvelope
from ttsync.qbo_sandbox.server import SandboxConfig, SandboxServer
from ttsync.settings import Settings
from ttsync.wiring import build_parts

REALM = "9130000000000001"

money = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("99999.99"), places=2)
text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=300)
# A client's name: anything with at least one character that is not a blank (a blank name is a MappingError).
names = text.filter(lambda n: html.unescape(n).strip())


@st.composite
def invoices(draw: Any, invoice_id: int = 1) -> dict[str, Any]:
    items = []
    for i in range(draw(st.integers(1, 5))):
        qty, price = draw(st.decimals(min_value=Decimal("0.25"), max_value=Decimal("200"), places=2)), draw(money)
        total = (qty * price).quantize(Decimal("0.01"))
        if draw(st.booleans()):  # TimeTracker's rounding sometimes disagrees: the mapping must cope
            total += Decimal("0.01")
        items.append({"id": i + 1, "invoice_id": invoice_id, "description": draw(text), "quantity": str(qty),
                      "unit_price": str(price), "total_amount": str(total)})
    subtotal = sum(Decimal(i["total_amount"]) for i in items)
    tax = draw(st.sampled_from([Decimal("0"), (subtotal * Decimal("0.1")).quantize(Decimal("0.01"))]))
    name = draw(names)
    return {"id": invoice_id, "invoice_number": draw(st.from_regex(r"[A-Z]{2,4}-[0-9]{1,12}", fullmatch=True)),
            "project_id": 1, "client_id": 1, "client_name": name, "issue_date": "2026-11-02",
            "due_date": "2026-12-02", "status": "sent", "subtotal": str(subtotal), "tax_amount": str(tax),
            "total_amount": str(subtotal + tax), "currency_code": draw(st.sampled_from(["USD", "EUR", "GBP"])),
            "notes": draw(st.none() | text), "items": items,
            "client": {"id": 1, "name": name, "email": None, "status": "active"}}


class Harness:
    """The consumer's applier against a fresh sandbox company and a fresh SQLite state store (no broker)."""

    def __init__(self, tmp: str) -> None:
        self.sandbox = SandboxServer(SandboxConfig(port=0, throttle_enabled=False)).start()
        token = requests.post(f"{self.sandbox.url}/__admin/tokens", json={"realm_id": REALM}, timeout=10).json()
        db = f"sqlite:///{tmp}/state-{uuid.uuid4().hex[:6]}.sqlite3"
        migrate.upgrade(make_engine(db))
        s = Settings(database_url=db, qbo_base_url=self.sandbox.url, qbo_token_url=self.sandbox.token_url,
                     qbo_realm_id=REALM, qbo_refresh_token=token["refresh_token"],
                     secret_key="prop-test-passphrase-0123",
                     qbo_requests_per_minute=1_000_000, qbo_burst=10_000)
        self.applier = build_parts(s).applier

    def qbo(self, entity: str) -> list[dict[str, Any]]:
        return requests.get(f"{self.sandbox.url}/__admin/realms/{REALM}/entities?type={entity}",
                            timeout=10).json()[entity]

    def close(self) -> None:
        self.sandbox.stop()


def envelope(payload: dict[str, Any], version: int, action: str = "updated") -> EventEnvelope:
    return EventEnvelope(event_id=uuid.uuid4(), event_type=f"invoice.{action}", aggregate_type="invoice",
                         aggregate_id=str(payload["id"]), aggregate_version=version,
                         occurred_at=dt.datetime.now(dt.UTC), payload=payload)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(inv=invoices())
def test_any_valid_invoice_maps_to_a_request_the_sandbox_accepts(inv: dict[str, Any], tmp_path: Any) -> None:
    h = Harness(str(tmp_path))
    try:
        outcome = h.applier.apply(envelope(inv, 1, "created"))
        assert outcome.result == "created", outcome
        stored = h.qbo("Invoice")[0]
        assert stored["DocNumber"] == inv["invoice_number"]
        assert Decimal(str(stored["TotalAmt"])) == Decimal(inv["total_amount"])
    finally:
        h.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(versions=st.lists(invoices(), min_size=2, max_size=5), data=st.data())
def test_any_order_duplication_or_replay_ends_at_the_latest_version(versions: list[dict[str, Any]], data: Any,
                                                                    tmp_path: Any) -> None:
    number = versions[0]["invoice_number"]
    # One client, one currency: QBO fixes a customer's currency, and TimeTracker bills a client in one.
    currency = versions[0]["currency_code"]
    events = [envelope({**v, "invoice_number": number, "currency_code": currency}, n + 1,
                       "created" if n == 0 else "updated")
              for n, v in enumerate(versions)]
    delivered = data.draw(st.lists(st.sampled_from(events), min_size=len(events), max_size=3 * len(events)))
    delivered += events  # every version arrives at least once, some many times, in any order
    delivered = data.draw(st.permutations(delivered))
    h = Harness(str(tmp_path))
    try:
        for evt in delivered:
            h.applier.apply(evt)
        stored = h.qbo("Invoice")
        assert len(stored) == 1  # never a duplicate
        latest = versions[-1]
        assert Decimal(str(stored[0]["TotalAmt"])) == Decimal(latest["total_amount"])
        assert [ln.get("Description") for ln in stored[0]["Line"] if ln.get("DetailType") != "SubTotalLineDetail"] \
            == [html.unescape(i["description"]) for i in latest["items"]]
    finally:
        h.close()


CATEGORIES = ("travel", "meals", "accommodation", "supplies", "software", "equipment", "services", "marketing",
              "training", "other")  # TimeTracker's ten expense categories
PAYMENT_METHODS = ("cash", "check", "credit_card", "bank_transfer", "paypal", "company_card", None)


def envelope_of(aggregate: str, payload: dict[str, Any], version: int = 1, action: str = "created") -> EventEnvelope:
    return EventEnvelope(event_id=uuid.uuid4(), event_type=f"{aggregate}.{action}", aggregate_type=aggregate,
                         aggregate_id=str(payload["id"]), aggregate_version=version,
                         occurred_at=dt.datetime.now(dt.UTC), payload=payload)


@st.composite
def expenses(draw: Any) -> dict[str, Any]:
    amount = draw(money)
    return {"id": draw(st.integers(1, 10**9)), "user_id": 1, "title": draw(text), "description": draw(st.none() | text),
            "category": draw(st.sampled_from(CATEGORIES)), "amount": str(amount),
            "currency_code": draw(st.sampled_from(["USD", "EUR", "GBP"])),
            "tax_amount": draw(st.sampled_from([None, "0", str((amount * Decimal("0.2")).quantize(Decimal("0.01")))])),
            "payment_method": draw(st.sampled_from(PAYMENT_METHODS)),
            "status": draw(st.sampled_from(["approved", "reimbursed"])), "expense_date": "2026-11-03",
            "payment_date": draw(st.none() | st.just("2026-11-04")), "vendor": draw(st.none() | text),
            "receipt_number": draw(st.none() | st.from_regex(r"[A-Z0-9-]{1,20}", fullmatch=True)),
            "notes": draw(st.none() | text)}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(exp=expenses())
def test_any_valid_expense_maps_to_a_purchase_the_sandbox_accepts(exp: dict[str, Any], tmp_path: Any) -> None:
    h = Harness(str(tmp_path))
    try:
        outcome = h.applier.apply(envelope_of("expense", exp))
        assert outcome.result == "created", outcome
        (stored,) = h.qbo("Purchase")
        tax = Decimal(exp["tax_amount"] or "0")
        assert Decimal(str(stored["TotalAmt"])) == Decimal(exp["amount"]) + tax
        assert stored["CurrencyRef"]["value"] == exp["currency_code"]
    finally:
        h.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(inv=invoices(), share=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1"), places=2),
       method=st.sampled_from(PAYMENT_METHODS), reference=st.none() | text, notes=st.none() | text)
def test_any_valid_payment_maps_to_a_payment_the_sandbox_links_to_its_invoice(
        inv: dict[str, Any], share: Decimal, method: str | None, reference: str | None, notes: str | None,
        tmp_path: Any) -> None:
    total = Decimal(inv["total_amount"])
    assume(total > 0)  # nothing to pay on an invoice of 0.25 x 0.01
    h = Harness(str(tmp_path))
    try:
        assert h.applier.apply(envelope_of("invoice", inv)).result == "created"
        amount = max(Decimal("0.01"), (total * share).quantize(Decimal("0.01")))
        pay = {"id": 1, "invoice_id": inv["id"], "invoice_number": inv["invoice_number"], "amount": str(amount),
               "currency": inv["currency_code"], "payment_date": "2026-11-10", "method": method,
               "reference": reference, "notes": notes, "status": "completed"}
        outcome = h.applier.apply(envelope_of("payment", pay))
        assert outcome.result == "created", outcome
        (payment,) = h.qbo("Payment")
        (invoice,) = h.qbo("Invoice")
        assert Decimal(str(payment["TotalAmt"])) == amount
        assert payment["Line"][0]["LinkedTxn"][0]["TxnId"] == invoice["Id"]
        assert payment["CustomerRef"]["value"] == invoice["CustomerRef"]["value"]
        assert Decimal(str(invoice["Balance"])) == total - amount
    finally:
        h.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=names, contact=st.none() | text,
       email=st.none() | st.emails(), phone=st.none() | text,
       address=st.none() | text)
def test_any_valid_client_maps_to_a_customer_the_sandbox_accepts(name: str, contact: str | None, email: str | None,
                                                                 phone: str | None, address: str | None,
                                                                 tmp_path: Any) -> None:
    h = Harness(str(tmp_path))
    try:
        client = {"id": 7, "name": name, "contact_person": contact, "email": email, "phone": phone,
                  "address": address, "status": "active"}
        outcome = h.applier.apply(envelope_of("client", client))
        assert outcome.result == "created", outcome
        (customer,) = h.qbo("Customer")
        assert customer["DisplayName"] == html.unescape(name).strip()[:500]
    finally:
        h.close()
