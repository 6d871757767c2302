"""Deliverables 3 and 6: the query language, batch and CDC."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.sandbox.client import QboTestClient
from tests.sandbox.conftest import invoice_body, item_id, new_customer
from ttsync.qbo_sandbox.query import parse


@pytest.fixture
def customers(qbo: QboTestClient) -> list[dict]:
    names = ["Acme Corp", "O'Brien & Sons", "Zeta LLC", "Beta Inc", "Ünïcode Café"]
    return [new_customer(qbo, n) for n in names]


def names(resp) -> list[str]:  # type: ignore[no-untyped-def]
    return [c["DisplayName"] for c in resp.json()["QueryResponse"].get("Customer", [])]


def test_select_where_equals_with_escaped_quote(qbo: QboTestClient, customers: list[dict]) -> None:
    resp = qbo.query("SELECT * FROM Customer WHERE DisplayName = 'O\\'Brien & Sons'")
    assert names(resp) == ["O'Brien & Sons"]
    body = resp.json()["QueryResponse"]
    assert body["startPosition"] == 1 and body["maxResults"] == 1 and "time" in resp.json()


def test_like_in_and_orderby_paging(qbo: QboTestClient, customers: list[dict]) -> None:
    assert names(qbo.query("SELECT * FROM Customer WHERE DisplayName LIKE '%Inc'")) == ["Beta Inc"]
    assert names(qbo.query("select * from Customer where DisplayName in ('Zeta LLC', 'Acme Corp') "
                           "orderby DisplayName")) == ["Acme Corp", "Zeta LLC"]
    page = qbo.query("SELECT * FROM Customer ORDERBY DisplayName DESC STARTPOSITION 2 MAXRESULTS 2")
    assert names(page) == ["Zeta LLC", "O'Brien & Sons"]
    assert names(qbo.query("SELECT * FROM Customer WHERE Active = true AND DisplayName LIKE 'A%'")) == ["Acme Corp"]


def test_count_and_no_match_shapes(qbo: QboTestClient, customers: list[dict]) -> None:
    assert qbo.query("SELECT COUNT(*) FROM Customer").json()["QueryResponse"] == {"totalCount": 5}
    assert qbo.query("SELECT * FROM Customer WHERE DisplayName = 'Nobody'").json()["QueryResponse"] == {}


def test_post_query_body_and_references_compare_by_value(qbo: QboTestClient, customers: list[dict]) -> None:
    cust = customers[0]
    qbo.create("invoice", invoice_body(cust["Id"], item_id(qbo), doc="INV-A"))
    qbo.create("invoice", invoice_body(customers[1]["Id"], item_id(qbo), doc="INV-B"))
    resp = qbo.query(f"SELECT * FROM Invoice WHERE CustomerRef = '{cust['Id']}'", method="POST")
    assert [i["DocNumber"] for i in resp.json()["QueryResponse"]["Invoice"]] == ["INV-A"]
    resp = qbo.query("SELECT * FROM Invoice WHERE TotalAmt >= 100 AND DocNumber = 'INV-B'")
    assert len(resp.json()["QueryResponse"]["Invoice"]) == 1


@pytest.mark.parametrize("bad", ["SELECT Id FROM Customer", "SELECT * FROM Customer WHERE A = 'x' OR B = 'y'",
                                 "DELETE FROM Customer", "SELECT * FROM Customer WHERE DisplayName = 'open"])
def test_unsupported_queries_are_4000(qbo: QboTestClient, bad: str) -> None:
    resp = qbo.query(bad)
    assert resp.status_code == 400 and qbo.fault_code(resp) == "4000"


def test_unknown_entity_is_a_query_validation_fault(qbo: QboTestClient) -> None:
    resp = qbo.query("SELECT * FROM Unicorn")
    assert resp.status_code == 400 and resp.json()["Fault"]["type"] == "QueryValidationError"


def test_parser_keeps_backslash_escapes() -> None:
    q = parse("SELECT * FROM Customer WHERE DisplayName = 'a\\'b\\\\c' MAXRESULTS 5000")
    assert q.where[0].value == "a'b\\c" and q.max_results == 1000


def test_batch_with_per_item_faults(qbo: QboTestClient) -> None:
    cust = new_customer(qbo)
    items = [
        {"bId": "1", "operation": "create", "Invoice": invoice_body(cust["Id"], item_id(qbo), doc="B-1")},
        {"bId": "2", "operation": "create", "Invoice": invoice_body("9999", item_id(qbo), doc="B-2")},
        {"bId": "3", "Query": "SELECT COUNT(*) FROM Invoice"},
        {"bId": "4", "operation": "create", "Customer": {"DisplayName": "Acme Corp"}},
    ]
    resp = qbo.post("batch", {"BatchItemRequest": items})
    assert resp.status_code == 200
    out = {r["bId"]: r for r in resp.json()["BatchItemResponse"]}
    assert out["1"]["Invoice"]["DocNumber"] == "B-1"
    assert out["2"]["Fault"]["Error"][0]["code"] == "2500"
    assert out["3"]["QueryResponse"]["totalCount"] == 1
    assert out["4"]["Fault"]["Error"][0]["code"] == "6240"


def test_batch_over_30_items_is_refused(qbo: QboTestClient) -> None:
    items = [{"bId": str(i), "operation": "create", "Customer": {"DisplayName": f"C{i}"}} for i in range(31)]
    resp = qbo.post("batch", {"BatchItemRequest": items})
    assert resp.status_code == 400 and qbo.fault_code(resp) == "2010"


def test_cdc_returns_changes_and_deletions(qbo: QboTestClient) -> None:
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat()
    cust = new_customer(qbo)
    inv = qbo.create("invoice", invoice_body(cust["Id"], item_id(qbo)))
    other = qbo.create("invoice", invoice_body(cust["Id"], item_id(qbo), doc="INV-2"))
    qbo.create("invoice", {"Id": other["Id"], "SyncToken": "0"}, operation="delete")
    resp = qbo.get("cdc", entities="Invoice,Customer", changedSince=since)
    assert resp.status_code == 200
    groups = resp.json()["CDCResponse"][0]["QueryResponse"]
    invoices = next(g["Invoice"] for g in groups if "Invoice" in g)
    assert {i["Id"] for i in invoices} == {inv["Id"], other["Id"]}
    assert next(i for i in invoices if i["Id"] == other["Id"])["status"] == "Deleted"
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=31)).isoformat()
    assert qbo.get("cdc", entities="Invoice", changedSince=old).status_code == 400
