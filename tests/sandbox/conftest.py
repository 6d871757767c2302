from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.sandbox.client import QboTestClient
from ttsync.qbo_sandbox.server import SandboxConfig, SandboxServer


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(port=0)) as server:
        yield server


def admin(server: SandboxServer, path: str, body: dict[str, Any] | None = None) -> Any:
    url = f"{server.url}/__admin/{path}"
    resp = requests.post(url, json=body or {}, timeout=10) if body is not None else requests.get(url, timeout=10)
    resp.raise_for_status()
    return resp.json()


def client_for(server: SandboxServer, realm: str = "9130000000000001") -> QboTestClient:
    token = admin(server, "tokens", {"realm_id": realm})["refresh_token"]
    return QboTestClient(server.url, server.token_url, realm, "ttsync-local", "ttsync-local-secret", token)


@pytest.fixture
def qbo(sandbox: SandboxServer) -> QboTestClient:
    return client_for(sandbox)


def new_customer(qbo: QboTestClient, name: str = "Acme Corp") -> dict[str, Any]:
    return qbo.create("customer", {"DisplayName": name, "PrimaryEmailAddr": {"Address": "ap@acme.test"}})


def account_id(qbo: QboTestClient, name: str) -> str:
    resp = qbo.query(f"SELECT * FROM Account WHERE Name = '{name}'")
    return resp.json()["QueryResponse"]["Account"][0]["Id"]


def item_id(qbo: QboTestClient, name: str = "Services") -> str:
    return qbo.query(f"SELECT * FROM Item WHERE Name = '{name}'").json()["QueryResponse"]["Item"][0]["Id"]


def invoice_body(customer_id: str, item: str, doc: str = "INV-1", amount: float = 150.0) -> dict[str, Any]:
    return {
        "CustomerRef": {"value": customer_id},
        "DocNumber": doc,
        "TxnDate": "2026-11-02",
        "DueDate": "2026-12-02",
        "Line": [{"DetailType": "SalesItemLineDetail", "Amount": amount, "Description": "Consulting",
                  "SalesItemLineDetail": {"ItemRef": {"value": item}, "Qty": 2, "UnitPrice": amount / 2}}],
    }
