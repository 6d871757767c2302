"""``ttsync qbo connect``: OAuth 2.0 authorization-code flow with a redirect to 127.0.0.1, tokens stored
encrypted; ``ttsync qbo status``: realm, token expiry, last successful call."""

from __future__ import annotations

import secrets
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests

from consumer.errors import ConfigurationError, ReconnectNeeded
from consumer.token_store import TokenStore
from producer import migrate
from producer.database import make_engine
from ttsync.settings import Settings
from ttsync.wiring import token_store

SCOPE = "com.intuit.quickbooks.accounting"


class ConnectError(RuntimeError):
    pass


CALLBACK_PATH = "/callback"


class _Callback:
    """A one-shot HTTP server on 127.0.0.1 that receives the authorization redirect. Only a request to the
    callback path carrying the state we sent ends the wait: a favicon fetch, a port scan or a page of another
    site poking 127.0.0.1 must neither end it nor plant a code."""

    def __init__(self, port: int, state: str) -> None:
        self.result: dict[str, str] = {}
        self.done = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                if url.path != CALLBACK_PATH:
                    self._answer(404, b"not found")
                    return
                if not secrets.compare_digest(query.get("state", ""), state):
                    self._answer(400, b"this answer does not carry the state ttsync sent: ignored")
                    return
                outer.result = query
                self._answer(200, b"ttsync is connected to QuickBooks Online. You can close this page."
                             if "code" in query else b"Authorization failed: " + query.get("error", "?").encode())
                outer.done.set()

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = HTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def authorize_url(settings: Settings, redirect_uri: str, state: str) -> str:
    query = {"client_id": settings.qbo_client_id, "redirect_uri": redirect_uri, "response_type": "code",
             "scope": SCOPE, "state": state}
    return f"{settings.qbo_authorize_url}?{urlencode(query)}"


def connect(settings: Settings, *, port: int, timeout_s: float, on_url: Any) -> dict[str, Any]:
    """Run the flow; ``on_url(url)`` shows the consent URL (and may open a browser). Returns what was stored."""
    state = secrets.token_urlsafe(16)
    callback = _Callback(port, state)
    redirect_uri = f"http://127.0.0.1:{callback.port}{CALLBACK_PATH}"
    try:
        on_url(authorize_url(settings, redirect_uri, state))
        if not callback.done.wait(timeout_s):
            raise ConnectError(f"no authorization arrived at {redirect_uri} within {timeout_s:.0f}s")
    finally:
        callback.close()
    got = callback.result
    if got.get("state") != state:
        raise ConnectError("the authorization answer carries the wrong state (a forged or stale redirect)")
    if "code" not in got:
        raise ConnectError(f"QuickBooks refused the authorization: {got.get('error', 'unknown error')}")
    realm = got.get("realmId") or settings.qbo_realm_id
    resp = requests.post(settings.qbo_token_url, data={"grant_type": "authorization_code", "code": got["code"],
                                                       "redirect_uri": redirect_uri},
                         auth=(settings.qbo_client_id, settings.qbo_client_secret.get_secret_value()),
                         headers={"Accept": "application/json"}, timeout=settings.qbo_timeout_s)
    if resp.status_code != 200:
        raise ConnectError(f"the token endpoint refused the code ({resp.status_code}): {resp.text[:200]}")
    tokens = resp.json()
    store = _store(settings.model_copy(update={"qbo_realm_id": realm, "qbo_refresh_token": None}))
    store.store_tokens(refresh_token=tokens["refresh_token"], access_token=tokens["access_token"],
                       expires_in=float(tokens.get("expires_in", 3600)),
                       refresh_expires_in=float(tokens.get("x_refresh_token_expires_in", 0)) or None)
    return {"realm_id": realm, "realm_matches_settings": realm == settings.qbo_realm_id,
            "access_expires_in_s": tokens.get("expires_in"),
            "refresh_expires_in_s": tokens.get("x_refresh_token_expires_in")}


def _store(settings: Settings, *, read_only: bool = False) -> TokenStore:
    """The token store; ``qbo connect`` (a setup step) brings the state tables up to date, a status never does:
    it tells you to run `ttsync db upgrade` instead."""
    engine = make_engine(settings.effective_state_database_url)
    if read_only:
        migrate.require_current(engine, "state database")
    else:
        migrate.upgrade(engine)
    return token_store(settings, engine)


def status(settings: Settings, *, check: bool) -> dict[str, Any]:
    store = _store(settings, read_only=True)
    state = store.state()
    out: dict[str, Any] = {"realm_id": settings.qbo_realm_id, "base_url": settings.qbo_base_url,
                           "connected": state is not None}
    if state is not None:
        out.update(access_expires_at=state.access_expires_at.isoformat() if state.access_expires_at else None,
                   refresh_expires_at=state.refresh_expires_at.isoformat() if state.refresh_expires_at else None,
                   refresh_rotations=state.rotations,
                   last_successful_call=state.last_success_at.isoformat() if state.last_success_at else None)
    if check:
        try:
            token = store.access_token()
            resp = requests.get(f"{settings.qbo_base_url}/v3/company/{settings.qbo_realm_id}/companyinfo/"
                                f"{settings.qbo_realm_id}", params={"minorversion": str(settings.qbo_minorversion)},
                                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                                timeout=settings.qbo_timeout_s)
            out["check"] = "ok" if resp.status_code == 200 else f"HTTP {resp.status_code}"
            if resp.status_code == 200:
                store._last_success_write = 0.0
                store.mark_success()
                out["last_successful_call"] = store.state().last_success_at.isoformat()  # type: ignore[union-attr]
        except ConfigurationError as exc:
            out["check"] = f"configuration: {exc}"
        except ReconnectNeeded as exc:
            out["check"] = f"reconnect needed: {exc}"
        except requests.RequestException as exc:
            out["check"] = f"unreachable: {type(exc).__name__}"
    return out
