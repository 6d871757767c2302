"""Deliverable 1: the OAuth 2.0 token endpoint, rotation, expiry and the 401 Fault."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
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


def test_ttsync_qbo_connect_then_status(sandbox: SandboxServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    import os
    import sqlite3
    import subprocess
    import sys

    db = tmp_path / "state.sqlite3"
    env = {**os.environ, "TTSYNC_DATABASE_URL": f"sqlite:///{db}", "TTSYNC_QBO_BASE_URL": sandbox.url,
           "TTSYNC_QBO_TOKEN_URL": sandbox.token_url, "TTSYNC_QBO_AUTHORIZE_URL": f"{sandbox.url}/connect/oauth2",
           "TTSYNC_SECRET_KEY": "connect-test-key", "TTSYNC_LOG_FORMAT": "json"}
    env.pop("TTSYNC_QBO_REFRESH_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "ttsync", "qbo", "connect", "--no-browser", "--port", "0",
                             "--json", "--timeout", "60"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr is not None
    url = ""
    for line in proc.stderr:
        if line.startswith("AUTHORIZE_URL "):
            url = line.split(" ", 1)[1].strip()
            break
    assert url.startswith(f"{sandbox.url}/connect/oauth2?") and "state=" in url
    # Only the callback path with the state sent ends the wait (a favicon fetch once ended it, and failed it).
    from urllib.parse import parse_qs, urlsplit

    callback = parse_qs(urlsplit(url).query)["redirect_uri"][0]
    base = callback.rsplit("/", 1)[0]
    assert requests.get(f"{base}/favicon.ico", timeout=10).status_code == 404
    assert requests.get(f"{callback}?code=planted&state=forged", timeout=10).status_code == 400
    assert proc.poll() is None  # still waiting for the real answer
    page = requests.get(url, timeout=30)  # the person's browser: consent, then the redirect to 127.0.0.1
    assert page.status_code == 200 and "connected" in page.text
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert json.loads(out)["realm_id"] == "9130000000000001"
    status = subprocess.run([sys.executable, "-m", "ttsync", "qbo", "status", "--check", "--json"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    info = json.loads(status.stdout)
    assert info["connected"] and info["check"] == "ok" and info["last_successful_call"]
    assert info["access_expires_at"] and info["refresh_expires_at"]
    raw = sqlite3.connect(db).execute("SELECT refresh_token_enc FROM ttsync_oauth_tokens").fetchone()
    assert not raw[0].startswith("RT1-")  # encrypted at rest


def test_ttsync_sandbox_hands_out_ready_settings_with_a_working_refresh_token(tmp_path: Path) -> None:
    """A new user can point `ttsync consume` at `ttsync sandbox` without reading the demo's code."""
    env_file = tmp_path / "sandbox.env"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTSYNC_")}
    proc = subprocess.Popen([sys.executable, "-m", "ttsync", "sandbox", "--port", "0", "--env-file", str(env_file)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not env_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        settings = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        assert set(settings) >= {"TTSYNC_QBO_BASE_URL", "TTSYNC_QBO_TOKEN_URL", "TTSYNC_QBO_REALM_ID",
                                 "TTSYNC_QBO_REFRESH_TOKEN", "TTSYNC_SECRET_KEY"}
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        answer = requests.post(settings["TTSYNC_QBO_TOKEN_URL"], auth=("ttsync-local", "ttsync-local-secret"),
                               data={"grant_type": "refresh_token",
                                     "refresh_token": settings["TTSYNC_QBO_REFRESH_TOKEN"]}, timeout=10)
        assert answer.status_code == 200 and answer.json()["access_token"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
