"""A contract both our sandbox and Intuit's real sandbox must honour.

It always runs against our sandbox. It also runs against Intuit when TTSYNC_QBO_BASE_URL points at Intuit and
TTSYNC_QBO_CLIENT_ID / _CLIENT_SECRET / _REFRESH_TOKEN / _REALM_ID are set: that is the one skip allowed in
this suite (these machines cannot reach Intuit).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.sandbox.client import QboTestClient
from tests.sandbox.conftest import client_for
from ttsync.qbo_sandbox.server import SandboxConfig, SandboxServer

INTUIT_TOKEN_URL = "https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer"


def _intuit_client() -> QboTestClient | None:
    base = os.environ.get("TTSYNC_QBO_BASE_URL", "")
    names = ("TTSYNC_QBO_CLIENT_ID", "TTSYNC_QBO_CLIENT_SECRET", "TTSYNC_QBO_REFRESH_TOKEN", "TTSYNC_QBO_REALM_ID")
    if "intuit.com" not in base or not all(os.environ.get(n) for n in names):
        return None
    return QboTestClient(base, os.environ.get("TTSYNC_QBO_TOKEN_URL", INTUIT_TOKEN_URL),
                         os.environ["TTSYNC_QBO_REALM_ID"], os.environ["TTSYNC_QBO_CLIENT_ID"],
                         os.environ["TTSYNC_QBO_CLIENT_SECRET"], os.environ["TTSYNC_QBO_REFRESH_TOKEN"])


@pytest.fixture(params=["sandbox", "intuit"])
def target(request: pytest.FixtureRequest) -> Iterator[QboTestClient]:
    if request.param == "intuit":
        client = _intuit_client()
        if client is None:
            pytest.skip("no Intuit credentials (TTSYNC_QBO_*): the contract ran against our sandbox only")
        yield client
        return
    with SandboxServer(SandboxConfig(port=0)) as server:
        yield client_for(server)


def _unique(prefix: str) -> str:
    return f"{prefix} {uuid.uuid4().hex[:8]}"


def _first_service_item(qbo: QboTestClient) -> str:
    items = qbo.query("SELECT * FROM Item WHERE Type = 'Service' MAXRESULTS 1").json()["QueryResponse"]["Item"]
    return items[0]["Id"]


def test_contract_customer_round_trip_with_quote_in_name(target: QboTestClient) -> None:
    name = _unique("O'Contract")
    created = target.create("customer", {"DisplayName": name})
    assert isinstance(created["Id"], str) and created["SyncToken"] == "0"
    escaped = name.replace("'", "\\'")
    found = target.query(f"SELECT * FROM Customer WHERE DisplayName = '{escaped}'").json()["QueryResponse"]
    assert [c["Id"] for c in found["Customer"]] == [created["Id"]]


def test_contract_requestid_makes_a_create_happen_once(target: QboTestClient) -> None:
    cust = target.create("customer", {"DisplayName": _unique("Contract Co")})
    doc = uuid.uuid4().hex[:12]
    body = {"CustomerRef": {"value": cust["Id"]}, "DocNumber": doc,
            "Line": [{"DetailType": "SalesItemLineDetail", "Amount": 10,
                      "SalesItemLineDetail": {"ItemRef": {"value": _first_service_item(target)}}}]}
    rid = str(uuid.uuid4())
    first = target.post("invoice", body, requestid=rid)
    second = target.post("invoice", body, requestid=rid)
    assert first.status_code == 200
    assert second.status_code == 200 or target.fault_code(second) == "600"
    found = target.query(f"SELECT * FROM Invoice WHERE DocNumber = '{doc}'").json()["QueryResponse"]
    assert len(found["Invoice"]) == 1


def test_contract_stale_synctoken_and_fault_shape(target: QboTestClient) -> None:
    cust = target.create("customer", {"DisplayName": _unique("Stale Co")})
    target.create("customer", {"Id": cust["Id"], "SyncToken": "0", "sparse": True, "Notes": "one"})
    resp = target.post("customer", {"Id": cust["Id"], "SyncToken": "0", "sparse": True, "Notes": "two"})
    assert resp.status_code == 400
    fault = resp.json()["Fault"]
    assert fault["Error"][0]["code"] == "5010" and isinstance(fault["Error"], list)


def test_contract_unknown_refresh_token_is_invalid_grant(target: QboTestClient) -> None:
    target.refresh_token = "not-a-token"
    resp = target.refresh()
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"
