"""Deliverables 7, 8 and 9: throttling, fault injection, inspection."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from tests.sandbox.client import QboTestClient
from tests.sandbox.conftest import admin, client_for, invoice_body, item_id, new_customer
from ttsync.qbo_sandbox.server import SandboxConfig, SandboxServer


def test_requests_per_minute_limit_gives_429_with_xml_fault_3001(sandbox: SandboxServer) -> None:
    admin(sandbox, "config", {"requests_per_minute": 20})
    qbo = client_for(sandbox)
    statuses = [qbo.get("companyinfo/9130000000000001").status_code for _ in range(25)]
    assert statuses[:20] == [200] * 20 and set(statuses[20:]) == {429}
    resp = qbo.get("companyinfo/9130000000000001")
    assert resp.headers["Content-Type"].startswith("application/xml")
    assert '<Error code="3001">' in resp.text and "ThrottleExceeded" in resp.text
    other_realm = client_for(sandbox, realm="42")
    assert other_realm.get("companyinfo/42").status_code == 200  # the budget is per realm


def test_concurrent_limit(sandbox: SandboxServer) -> None:
    admin(sandbox, "config", {"concurrent_requests": 3, "latency_ms": 400})
    qbo = client_for(sandbox)
    qbo.headers()
    results: list[int] = []
    lock = threading.Lock()

    def call() -> None:
        r = requests.get(qbo.url("companyinfo/9130000000000001"), headers=qbo.headers(), timeout=10)
        with lock:
            results.append(r.status_code)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(200) == 3 and results.count(429) == 3


def test_a_batch_counts_once_and_has_its_own_limit(sandbox: SandboxServer) -> None:
    admin(sandbox, "config", {"batch_requests_per_minute": 2})
    qbo = client_for(sandbox)
    batch = {"BatchItemRequest": [{"bId": str(i), "Query": "SELECT COUNT(*) FROM Item"} for i in range(30)]}
    assert [qbo.post("batch", batch).status_code for _ in range(3)] == [200, 200, 429]
    assert admin(sandbox, "stats")["requests_last_minute"]["9130000000000001"] == 2


def test_throttling_can_be_turned_off(sandbox: SandboxServer) -> None:
    admin(sandbox, "config", {"requests_per_minute": 5, "throttle_enabled": False})
    qbo = client_for(sandbox)
    assert {qbo.get("companyinfo/9130000000000001").status_code for _ in range(10)} == {200}


def test_injected_5xx_latency_and_storm_are_seeded(sandbox: SandboxServer) -> None:
    admin(sandbox, "config", {"error_rate": 0.5, "seed": 7})
    qbo = client_for(sandbox)
    first = [qbo.get("companyinfo/9130000000000001").status_code for _ in range(40)]
    admin(sandbox, "config", {"seed": 7})
    second = [qbo.get("companyinfo/9130000000000001").status_code for _ in range(40)]
    assert first == second  # the same seed replays the same failures
    assert {500, 503} & set(first) and 200 in first
    injected = sum(1 for s in first if s >= 500)
    assert 10 <= injected <= 30  # error_rate 0.5 of 40 calls (seeded, so the same count every run)
    admin(sandbox, "config", {"error_rate": 0, "latency_ms": 150})
    started = time.monotonic()
    qbo.get("companyinfo/9130000000000001")
    assert time.monotonic() - started >= 0.15
    admin(sandbox, "config", {"latency_ms": 0, "throttle_rate": 1.0})
    assert qbo.get("companyinfo/9130000000000001").status_code == 429


def test_system_fault_body_shape(sandbox: SandboxServer) -> None:
    admin(sandbox, "config", {"error_rate": 1.0})
    resp = client_for(sandbox).get("companyinfo/9130000000000001")
    assert resp.status_code in (500, 503) and resp.json()["Fault"]["type"] == "SystemFault"


def test_timeout_after_apply_then_retry_with_same_requestid_creates_once(sandbox: SandboxServer) -> None:
    qbo = client_for(sandbox)
    cust = new_customer(qbo)
    body = invoice_body(cust["Id"], item_id(qbo))
    admin(sandbox, "config", {"timeout_rate": 1.0, "timeout_hang_s": 1.0, "timeout_after_apply": True})
    with pytest.raises(requests.exceptions.RequestException):
        qbo.post("invoice", body, timeout=0.5, requestid="evt-9-create")
    admin(sandbox, "config", {"timeout_rate": 0.0})
    retry = qbo.post("invoice", body, requestid="evt-9-create")
    assert retry.status_code == 200
    assert qbo.query("SELECT COUNT(*) FROM Invoice").json()["QueryResponse"]["totalCount"] == 1
    assert admin(sandbox, "requestids")["evt-9-create"] == 1


def test_config_at_start_time() -> None:
    with SandboxServer(SandboxConfig(port=0, requests_per_minute=3, seed=3)) as server:
        qbo = client_for(server)
        assert [qbo.get("companyinfo/9130000000000001").status_code for _ in range(4)] == [200, 200, 200, 429]


def test_admin_api_and_html_page(sandbox: SandboxServer, qbo: QboTestClient) -> None:
    cust = new_customer(qbo, "Page <Corp>")
    qbo.create("invoice", invoice_body(cust["Id"], item_id(qbo), doc="INV-PAGE"))
    entities = admin(sandbox, "realms/9130000000000001/entities?type=Invoice")
    assert [i["DocNumber"] for i in entities["Invoice"]] == ["INV-PAGE"]
    log = admin(sandbox, "requests")["requests"]
    assert any(r["path"].endswith("/invoice") and r["status"] == 200 for r in log)
    stats = admin(sandbox, "stats")
    assert stats["status_counts"]["200"] >= 3 and stats["token_refreshes"] == 1
    page = requests.get(sandbox.url + "/", timeout=10)
    assert page.status_code == 200 and "INV-PAGE" in page.text and "Page &lt;Corp&gt;" in page.text
    seeded = admin(sandbox, "realms/9130000000000001/seed", {"Customer": [{"DisplayName": "Seeded"}]})
    assert len(seeded["Customer"]) == 1
    admin(sandbox, "reset", {})
    assert admin(sandbox, "realms") == {"realms": []}
    with pytest.raises(requests.HTTPError):
        admin(sandbox, "config", {"host": "0.0.0.0"})  # not a run-time setting


def test_the_sandbox_listens_on_loopback_unless_told_otherwise() -> None:
    server = SandboxServer(SandboxConfig(port=0))
    try:
        assert server.httpd.server_address[0] == "127.0.0.1" and server.url.startswith("http://127.0.0.1:")
    finally:
        server.httpd.server_close()
    told = SandboxServer(SandboxConfig(host="0.0.0.0", port=0))  # `ttsync sandbox --host 0.0.0.0` (compose)
    try:
        assert told.httpd.server_address[0] == "0.0.0.0" and told.url.startswith("http://127.0.0.1:")
    finally:
        told.httpd.server_close()


def test_the_admin_api_refuses_other_sites_and_rebound_hosts(sandbox: SandboxServer) -> None:
    url = f"{sandbox.url}/__admin/stats"
    assert requests.get(url, timeout=10).status_code == 200
    assert requests.get(url, headers={"Origin": "https://evil.example"}, timeout=10).status_code == 403
    assert requests.post(f"{sandbox.url}/__admin/reset", json={}, headers={"Host": "rebound.example:8765"},
                         timeout=10).status_code == 403
    assert requests.get(url, headers={"Origin": f"http://localhost:{sandbox.port}"}, timeout=10).status_code == 200


def test_the_page_escapes_every_value_a_client_stored(sandbox: SandboxServer) -> None:
    qbo = client_for(sandbox)
    qbo.create("customer", {"DisplayName": "Plain", "Balance": "<script>alert(1)</script>"})
    page = requests.get(f"{sandbox.url}/", timeout=10).text
    assert "<script>" not in page and "&lt;script&gt;" in page
