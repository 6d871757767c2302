"""Deliverable 1: the OAuth 2.0 token endpoint, rotation, expiry and the 401 Fault."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import requests

from tests.sandbox.conftest import admin, client_for
from ttsync.qbo_sandbox.server import SandboxServer


def test_refresh_grant_with_basic_auth_and_form_body(sandbox: SandboxServer) -> None:
    qbo = client_for(sandbox)
    first = qbo.refresh_token
    resp = qbo.refresh()
    assert resp.status_code == 200
    body = resp.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    assert body["x_refresh_token_expires_in"] > 0
    assert body["refresh_token"] != first  # rotated
    assert qbo.get("companyinfo/9130000000000001").status_code == 200


def test_rotated_away_revoked_and_unknown_refresh_tokens_get_invalid_grant(sandbox: SandboxServer) -> None:
    qbo = client_for(sandbox)
    old = qbo.refresh_token
    assert qbo.refresh().status_code == 200
    stale = requests.post(sandbox.token_url, data={"grant_type": "refresh_token", "refresh_token": old},
                          headers={"Authorization": qbo.basic()}, timeout=10)
    assert stale.status_code == 400 and stale.json()["error"] == "invalid_grant"
    unknown = requests.post(sandbox.token_url, data={"grant_type": "refresh_token", "refresh_token": "nope"},
                            headers={"Authorization": qbo.basic()}, timeout=10)
    assert unknown.json()["error"] == "invalid_grant"
    revoke = requests.post(f"{sandbox.url}/oauth2/v1/tokens/revoke", json={"token": qbo.refresh_token},
                           headers={"Authorization": qbo.basic()}, timeout=10)
    assert revoke.status_code == 200
    assert qbo.refresh().json()["error"] == "invalid_grant"


def test_wrong_client_credentials_get_invalid_client(sandbox: SandboxServer) -> None:
    qbo = client_for(sandbox)
    qbo.client_secret = "wrong"
    resp = qbo.refresh()
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"


def test_expired_and_unknown_access_tokens_get_401_fault(sandbox: SandboxServer) -> None:
    admin(sandbox, "config", {"access_token_lifetime_s": 1})
    qbo = client_for(sandbox)
    assert qbo.get("companyinfo/9130000000000001").status_code == 200
    time.sleep(1.2)
    resp = qbo.get("companyinfo/9130000000000001")
    assert resp.status_code == 401
    fault = resp.json()["Fault"]
    assert fault["type"] == "AuthenticationFault" and fault["Error"][0]["code"] == "3200"
    qbo.access_token = "made-up"
    assert qbo.get("companyinfo/9130000000000001").status_code == 401


def test_token_expiry_now_from_the_admin_api(sandbox: SandboxServer) -> None:
    qbo = client_for(sandbox)
    assert qbo.get("companyinfo/9130000000000001").status_code == 200
    assert admin(sandbox, "expire-tokens", {})["expired"] >= 1
    assert qbo.get("companyinfo/9130000000000001").status_code == 401
    assert qbo.refresh().status_code == 200
    assert qbo.get("companyinfo/9130000000000001").status_code == 200


def test_token_of_one_realm_does_not_open_another(sandbox: SandboxServer) -> None:
    qbo = client_for(sandbox, realm="111")
    qbo.headers()
    qbo.realm = "222"
    assert qbo.get("companyinfo/222").status_code == 401


def test_authorization_code_flow(sandbox: SandboxServer) -> None:
    redirect = "http://127.0.0.1:9/callback"
    resp = requests.get(f"{sandbox.url}/connect/oauth2", params={
        "client_id": "ttsync-local", "redirect_uri": redirect, "response_type": "code",
        "scope": "com.intuit.quickbooks.accounting", "state": "xyz"}, allow_redirects=False, timeout=10)
    assert resp.status_code == 302
    query = parse_qs(urlsplit(resp.headers["Location"]).query)
    assert query["state"] == ["xyz"] and query["realmId"] == ["9130000000000001"]
    qbo = client_for(sandbox)
    token = requests.post(sandbox.token_url, data={"grant_type": "authorization_code", "code": query["code"][0],
                                                   "redirect_uri": redirect},
                          headers={"Authorization": qbo.basic()}, timeout=10)
    assert token.status_code == 200 and token.json()["refresh_token"].startswith("RT1-")
    again = requests.post(sandbox.token_url, data={"grant_type": "authorization_code", "code": query["code"][0],
                                                   "redirect_uri": redirect},
                          headers={"Authorization": qbo.basic()}, timeout=10)
    assert again.json()["error"] == "invalid_grant"  # a code is good once
