"""Deliverables 2, 4 and 5: entities, SyncToken, updates, delete/void, requestid, validation Faults."""

from __future__ import annotations

import pytest

from tests.sandbox.client import QboTestClient
from tests.sandbox.conftest import account_id, admin, client_for, invoice_body, item_id, new_customer
from ttsync.qbo_sandbox.server import SandboxServer


def test_new_company_has_a_chart_of_accounts_and_a_default_item(qbo: QboTestClient) -> None:
    accounts = qbo.query("SELECT * FROM Account MAXRESULTS 100").json()["QueryResponse"]["Account"]
    kinds = {a["AccountType"] for a in accounts}
    assert {"Bank", "Credit Card", "Expense", "Income", "Accounts Receivable"} <= kinds
    items = qbo.query("SELECT * FROM Item").json()["QueryResponse"]["Item"]
    assert any(i["Name"] == "Services" and i["Type"] == "Service" for i in items)


def test_create_read_ids_and_synctokens(qbo: QboTestClient) -> None:
    cust = new_customer(qbo)
    assert isinstance(cust["Id"], str) and cust["SyncToken"] == "0"
    inv = qbo.create("invoice", invoice_body(cust["Id"], item_id(qbo)))
    assert inv["SyncToken"] == "0" and inv["TotalAmt"] == 150 and inv["Balance"] == 150
    assert inv["Line"][-1]["DetailType"] == "SubTotalLineDetail"
    read = qbo.get(f"invoice/{inv['Id']}").json()["Invoice"]
    assert read["DocNumber"] == "INV-1" and read["CustomerRef"]["value"] == cust["Id"]


def test_sparse_update_keeps_and_full_update_clears(qbo: QboTestClient) -> None:
    cust = new_customer(qbo)
    inv = qbo.create("invoice", {**invoice_body(cust["Id"], item_id(qbo)), "PrivateNote": "tt:invoice:1"})
    sparse = qbo.create("invoice", {"Id": inv["Id"], "SyncToken": inv["SyncToken"], "sparse": True,
                                    "DueDate": "2027-01-01"})
    assert sparse["SyncToken"] == "1" and sparse["PrivateNote"] == "tt:invoice:1" and sparse["DueDate"] == "2027-01-01"
    full_body = {**invoice_body(cust["Id"], item_id(qbo)), "Id": inv["Id"], "SyncToken": "1"}
    full = qbo.create("invoice", full_body)
    assert full["SyncToken"] == "2" and "PrivateNote" not in full  # a full update clears what it omits


def test_stale_synctoken_gives_5010(qbo: QboTestClient) -> None:
    cust = new_customer(qbo)
    inv = qbo.create("invoice", invoice_body(cust["Id"], item_id(qbo)))
    qbo.create("invoice", {"Id": inv["Id"], "SyncToken": "0", "sparse": True, "DueDate": "2027-01-01"})
    resp = qbo.post("invoice", {"Id": inv["Id"], "SyncToken": "0", "sparse": True, "DueDate": "2027-02-01"})
    assert resp.status_code == 400 and qbo.fault_code(resp) == "5010"
    assert "Stale Object Error" in resp.json()["Fault"]["Error"][0]["Message"]


def test_delete_and_void(qbo: QboTestClient) -> None:
    cust = new_customer(qbo)
    inv = qbo.create("invoice", invoice_body(cust["Id"], item_id(qbo)))
    voided = qbo.create("invoice", {"Id": inv["Id"], "SyncToken": inv["SyncToken"]}, operation="void")
    assert voided["TotalAmt"] == 0 and voided["Balance"] == 0 and voided["PrivateNote"].startswith("Voided")
    assert voided["SyncToken"] == "1"
    other = qbo.create("invoice", invoice_body(cust["Id"], item_id(qbo), doc="INV-2"))
    gone = qbo.create("invoice", {"Id": other["Id"], "SyncToken": "0"}, operation="delete")
    assert gone == {"Id": other["Id"], "status": "Deleted", "domain": "QBO"}
    assert qbo.get(f"invoice/{other['Id']}").status_code == 400
    resp = qbo.post("customer", {"Id": cust["Id"], "SyncToken": cust["SyncToken"]}, operation="delete")
    assert resp.status_code == 400 and qbo.fault_code(resp) == "500"  # name lists: make inactive instead


def test_payment_applies_to_invoice_and_void_restores_the_balance(qbo: QboTestClient) -> None:
    cust = new_customer(qbo)
    inv = qbo.create("invoice", invoice_body(cust["Id"], item_id(qbo)))
    pay = qbo.create("payment", {"CustomerRef": {"value": cust["Id"]}, "TotalAmt": 100,
                                 "Line": [{"Amount": 100, "LinkedTxn": [{"TxnId": inv["Id"], "TxnType": "Invoice"}]}]})
    assert pay["UnappliedAmt"] == 0
    after = qbo.get(f"invoice/{inv['Id']}").json()["Invoice"]
    assert after["Balance"] == 50 and after["SyncToken"] == "1"  # applying a payment writes the invoice
    voided = qbo.create("payment", {"Id": pay["Id"], "SyncToken": pay["SyncToken"], "sparse": True},
                        operation="update", include="void")
    assert voided["TotalAmt"] == 0
    assert qbo.get(f"invoice/{inv['Id']}").json()["Invoice"]["Balance"] == 150
    link = [{"TxnId": inv["Id"], "TxnType": "Invoice"}]
    too_much = qbo.post("payment", {"CustomerRef": {"value": cust["Id"]}, "TotalAmt": 500,
                                    "Line": [{"Amount": 500, "LinkedTxn": link}]})
    assert too_much.status_code == 400 and qbo.fault_code(too_much) == "6000"


def test_purchase_rules(qbo: QboTestClient) -> None:
    bank, travel, visa = account_id(qbo, "Checking"), account_id(qbo, "Travel"), account_id(qbo, "Visa")
    vendor = qbo.create("vendor", {"DisplayName": "Rail Co"})
    body = {"PaymentType": "Cash", "AccountRef": {"value": bank},
            "EntityRef": {"value": vendor["Id"], "type": "Vendor"}, "TotalAmt": 46.31, "DocNumber": "EXP-1",
            "Line": [{"DetailType": "AccountBasedExpenseLineDetail", "Amount": 46.31,
                      "AccountBasedExpenseLineDetail": {"AccountRef": {"value": travel}}}]}
    created = qbo.create("purchase", body)
    assert created["TotalAmt"] == 46.31
    mismatch = qbo.post("purchase", {**body, "DocNumber": "EXP-2", "TotalAmt": 50})
    assert qbo.fault_code(mismatch) == "6000"
    dup = qbo.post("purchase", body)
    assert qbo.fault_code(dup) == "6140"
    assert qbo.post("purchase", body, include="allowduplicatedocnum").status_code == 200
    wrong_account = qbo.post("purchase", {**body, "DocNumber": "EXP-3", "PaymentType": "CreditCard"})
    assert qbo.fault_code(wrong_account) == "6000"
    assert qbo.post("purchase", {**body, "DocNumber": "EXP-4", "PaymentType": "CreditCard",
                                 "AccountRef": {"value": visa}}).status_code == 200
    bad_enum = qbo.post("purchase", {**body, "DocNumber": "EXP-5", "PaymentType": "Barter"})
    assert qbo.fault_code(bad_enum) == "2170"


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda b: b.pop("CustomerRef"), "2020"),
        (lambda b: b.update(Line=[]), "2020"),
        (lambda b: b.update(DocNumber="X" * 22), "2050"),
        (lambda b: b.update(CustomerRef={"value": "99999"}), "2500"),
        (lambda b: b["Line"][0]["SalesItemLineDetail"].update(ItemRef={"value": "99999"}), "2500"),
        (lambda b: b["Line"][0].update(Amount=151), "6070"),
        (lambda b: b.update(TxnDate="2026-13-45"), "2060"),
    ],
)
def test_invoice_validation_faults(qbo: QboTestClient, mutate, code: str) -> None:  # type: ignore[no-untyped-def]
    cust = new_customer(qbo)
    body = invoice_body(cust["Id"], item_id(qbo))
    mutate(body)
    resp = qbo.post("invoice", body)
    assert resp.status_code == 400
    payload = resp.json()
    assert set(payload) == {"Fault", "time"}
    assert set(payload["Fault"]) == {"Error", "type"} and payload["Fault"]["type"] == "ValidationFault"
    error = payload["Fault"]["Error"][0]
    assert set(error) == {"Message", "Detail", "code", "element"} and error["code"] == code


def test_inactive_customer_is_610_and_duplicates_are_6240_and_6140(qbo: QboTestClient) -> None:
    cust = new_customer(qbo)
    dup = qbo.post("customer", {"DisplayName": "Acme Corp"})
    assert qbo.fault_code(dup) == "6240"
    vendor_clash = qbo.post("vendor", {"DisplayName": "Acme Corp"})
    assert qbo.fault_code(vendor_clash) == "6240"  # DisplayName is unique across customers and vendors
    qbo.create("invoice", invoice_body(cust["Id"], item_id(qbo), doc="INV-9"))
    assert qbo.fault_code(qbo.post("invoice", invoice_body(cust["Id"], item_id(qbo), doc="INV-9"))) == "6140"
    qbo.create("customer", {"Id": cust["Id"], "SyncToken": "0", "sparse": True, "Active": False})
    resp = qbo.post("invoice", invoice_body(cust["Id"], item_id(qbo), doc="INV-10"))
    assert qbo.fault_code(resp) == "610"


def test_minorversion_is_accepted_and_logged(sandbox: SandboxServer, qbo: QboTestClient) -> None:
    assert qbo.get("companyinfo/9130000000000001", minorversion="75").status_code == 200
    assert qbo.get("companyinfo/9130000000000001", minorversion="4").status_code == 200
    versions = [r["minorversion"] for r in admin(sandbox, "requests")["requests"] if r["minorversion"]]
    assert versions[-2:] == ["75", "4"]


def test_repeated_requestid_replays_the_first_response_and_writes_once(sandbox: SandboxServer,
                                                                      qbo: QboTestClient) -> None:
    cust = new_customer(qbo)
    body = invoice_body(cust["Id"], item_id(qbo))
    first = qbo.post("invoice", body, requestid="evt-1-create")
    second = qbo.post("invoice", body, requestid="evt-1-create")
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert len(qbo.query("SELECT * FROM Invoice").json()["QueryResponse"]["Invoice"]) == 1
    assert admin(sandbox, "requestids")["evt-1-create"] == 1


def test_duplicate_requestid_fault_mode_answers_600(sandbox: SandboxServer) -> None:
    admin(sandbox, "config", {"duplicate_requestid_mode": "fault"})
    qbo = client_for(sandbox)
    body = {"DisplayName": "Once"}
    assert qbo.post("customer", body, requestid="r-1").status_code == 200
    resp = qbo.post("customer", body, requestid="r-1")
    assert resp.status_code == 400 and qbo.fault_code(resp) == "600"
    assert len(qbo.query("SELECT * FROM Customer").json()["QueryResponse"]["Customer"]) == 1


def test_requestid_longer_than_50_chars_is_2130(qbo: QboTestClient) -> None:
    assert qbo.fault_code(qbo.post("customer", {"DisplayName": "X"}, requestid="r" * 51)) == "2130"


def test_payloads_parse_with_python_quickbooks_objects(qbo: QboTestClient) -> None:
    from quickbooks.objects.customer import Customer
    from quickbooks.objects.invoice import Invoice
    from quickbooks.objects.payment import Payment
    from quickbooks.objects.purchase import Purchase

    cust = new_customer(qbo)
    inv = qbo.create("invoice", invoice_body(cust["Id"], item_id(qbo)))
    pay = qbo.create("payment", {"CustomerRef": {"value": cust["Id"]}, "TotalAmt": 10,
                                 "Line": [{"Amount": 10, "LinkedTxn": [{"TxnId": inv["Id"], "TxnType": "Invoice"}]}]})
    pur = qbo.create("purchase", {"PaymentType": "Cash", "AccountRef": {"value": account_id(qbo, "Checking")},
                                  "Line": [{"DetailType": "AccountBasedExpenseLineDetail", "Amount": 5,
                                            "AccountBasedExpenseLineDetail": {
                                                "AccountRef": {"value": account_id(qbo, "Travel")}}}]})
    assert Customer.from_json(cust).DisplayName == "Acme Corp"
    parsed = Invoice.from_json(qbo.get(f"invoice/{inv['Id']}").json()["Invoice"])
    assert parsed.DocNumber == "INV-1" and parsed.CustomerRef.value == cust["Id"]
    assert parsed.Line[0].SalesItemLineDetail.ItemRef.value == item_id(qbo)
    assert Payment.from_json(pay).Line[0].LinkedTxn[0].TxnId == inv["Id"]
    assert Purchase.from_json(pur).Line[0].AccountBasedExpenseLineDetail.AccountRef.value == account_id(qbo, "Travel")


def test_a_customers_currency_is_fixed_and_its_transactions_are_in_it(qbo: QboTestClient) -> None:
    eur = qbo.create("customer", {"DisplayName": "Müller GmbH", "CurrencyRef": {"value": "EUR"}})
    home = new_customer(qbo, "Home Currency Inc")
    assert eur["CurrencyRef"]["value"] == "EUR" and home["CurrencyRef"]["value"] == "USD"  # the company's home
    change = qbo.post("customer", {"Id": eur["Id"], "SyncToken": eur["SyncToken"], "sparse": True,
                                   "CurrencyRef": {"value": "USD"}})
    assert change.status_code == 400 and "currency of a customer" in change.text
    wrong = qbo.post("invoice", {**invoice_body(eur["Id"], item_id(qbo)), "CurrencyRef": {"value": "USD"}})
    assert wrong.status_code == 400 and "customer's currency" in wrong.text
    right = qbo.create("invoice", invoice_body(eur["Id"], item_id(qbo)))  # no CurrencyRef: the customer's
    assert right["CurrencyRef"]["value"] == "EUR"
