"""The consumer's QBO client and token store against the sandbox (no broker needed)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from consumer.errors import (
    DuplicateRequestId,
    QboThrottled,
    QboUnavailable,
    QboValidationFault,
    ReconnectNeeded,
    StaleSyncToken,
)
from consumer.qbo_client import QboClient
from consumer.qbo_queries import quote
from consumer.rate_limit import LocalTokenBucket
from consumer.state_tables import oauth_tokens
from consumer.token_store import TokenStore, make_cipher
from producer import migrate
from producer.database import make_engine
from tests.sandbox.conftest import admin
from ttsync.qbo_sandbox.server import SandboxServer

REALM = "9130000000000001"


@pytest.fixture
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    eng = make_engine(f"sqlite:///{tmp_path / 'state.sqlite3'}")
    migrate.upgrade(eng)
    return eng


def tokens(sandbox: SandboxServer, engine, seed: str | None) -> TokenStore:  # type: ignore[no-untyped-def]
    return TokenStore(engine, REALM, make_cipher("test-secret-passphrase-0123"), token_url=sandbox.token_url,
                      client_id="ttsync-local", client_secret="ttsync-local-secret", seed_refresh_token=seed)


def client(sandbox: SandboxServer, store: TokenStore) -> QboClient:
    return QboClient(sandbox.url, REALM, store, LocalTokenBucket(1000, 100), throttle_default_wait_s=3)


def test_refresh_rotation_is_persisted_encrypted(sandbox: SandboxServer, engine) -> None:  # type: ignore[no-untyped-def]
    seed = admin(sandbox, "tokens", {"realm_id": REALM})["refresh_token"]
    store = tokens(sandbox, engine, seed)
    qbo = client(sandbox, store)
    assert qbo.query("SELECT * FROM Item WHERE Name = 'Services'", "Item")[0]["Name"] == "Services"
    state = store.state()
    assert state is not None and state.refresh_token != seed and state.rotations == 1
    with engine.connect() as conn:
        row = conn.execute(select(oauth_tokens)).one()
    assert seed not in row.refresh_token_enc and state.refresh_token not in row.refresh_token_enc
    assert state.access_token not in (row.access_token_enc or "")
    # a second store (another process) reads the rotated token from the database, not the old seed
    other = client(sandbox, tokens(sandbox, engine, seed))
    admin(sandbox, "expire-tokens", {})
    assert other.query("SELECT * FROM Item", "Item")  # 401 -> refresh with the stored token -> retry
    assert admin(sandbox, "stats")["token_refreshes"] == 2


def test_invalid_grant_is_reconnect_needed(sandbox: SandboxServer, engine) -> None:  # type: ignore[no-untyped-def]
    qbo = client(sandbox, tokens(sandbox, engine, "RT1-unknown"))
    with pytest.raises(ReconnectNeeded, match="invalid_grant"):
        qbo.query("SELECT * FROM Item", "Item")
    with pytest.raises(ReconnectNeeded, match="TTSYNC_QBO_REFRESH_TOKEN"):
        client(sandbox, tokens(sandbox, make_engine_for_empty(engine), None)).query("SELECT * FROM Item", "Item")


def make_engine_for_empty(engine):  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(oauth_tokens.delete())
    return engine


def test_one_refresh_at_a_time_across_stores(sandbox: SandboxServer, engine) -> None:  # type: ignore[no-untyped-def]
    seed = admin(sandbox, "tokens", {"realm_id": REALM})["refresh_token"]
    stores = [tokens(sandbox, engine, seed) for _ in range(4)]
    stores[0].access_token()  # seed once, then expire everything
    admin(sandbox, "expire-tokens", {})
    before = admin(sandbox, "stats")["token_refreshes"]
    for s in stores:
        s._access = None  # as if each process found its token expired
    results: list[BaseException | str] = []

    def refresh(store: TokenStore) -> None:
        try:
            results.append(store.refresh(failed_token=None))
        except BaseException as exc:  # noqa: BLE001 - collected for the assert
            results.append(exc)

    # the stored access token is expired at the sandbox but not in the database: force a real refresh
    with engine.begin() as conn:
        conn.execute(oauth_tokens.update().values(access_expires_at=None))
    threads = [threading.Thread(target=refresh, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(isinstance(r, str) for r in results), results
    assert len(set(results)) == 1  # everyone got the token the single refresher stored
    assert admin(sandbox, "stats")["token_refreshes"] == before + 1


def test_new_seed_token_replaces_the_stored_one(sandbox: SandboxServer, engine) -> None:  # type: ignore[no-untyped-def]
    first = admin(sandbox, "tokens", {"realm_id": REALM})["refresh_token"]
    tokens(sandbox, engine, first).access_token()
    admin(sandbox, "reset", {})
    second = admin(sandbox, "tokens", {"realm_id": REALM})["refresh_token"]  # an operator reconnected
    assert tokens(sandbox, engine, second).access_token().startswith("AT-")


def test_faults_become_typed_errors(sandbox: SandboxServer, engine) -> None:  # type: ignore[no-untyped-def]
    seed = admin(sandbox, "tokens", {"realm_id": REALM})["refresh_token"]
    qbo = client(sandbox, tokens(sandbox, engine, seed))
    cust = qbo.create("Customer", {"DisplayName": "O'Brien"}, "r-1")
    assert qbo.query(f"SELECT * FROM Customer WHERE DisplayName = {quote(chr(39).join(['O', 'Brien']))}",
                     "Customer")[0]["Id"] == cust["Id"]
    with pytest.raises(QboValidationFault) as fault:
        qbo.create("Customer", {"DisplayName": "O'Brien"}, "r-2")
    assert fault.value.code == "6240" and '"6240"' in fault.value.body and not fault.value.retryable
    qbo.update("Customer", {"Id": cust["Id"], "SyncToken": "0", "sparse": True, "Notes": "a"}, "r-3")
    with pytest.raises(StaleSyncToken):
        qbo.update("Customer", {"Id": cust["Id"], "SyncToken": "0", "sparse": True, "Notes": "b"}, "r-4")
    admin(sandbox, "config", {"duplicate_requestid_mode": "fault"})
    with pytest.raises(DuplicateRequestId):
        qbo.create("Customer", {"DisplayName": "O'Brien"}, "r-1")
    admin(sandbox, "config", {"throttle_rate": 1.0, "throttle_retry_after_s": 2})
    with pytest.raises(QboThrottled) as throttled:
        qbo.read("Customer", cust["Id"])
    assert throttled.value.retry_after_s == 2 and throttled.value.retryable
    admin(sandbox, "config", {"throttle_rate": 0.0, "error_rate": 1.0})
    with pytest.raises(QboUnavailable):
        qbo.read("Customer", cust["Id"])


def test_minorversion_and_requestid_on_every_call(sandbox: SandboxServer, engine) -> None:  # type: ignore[no-untyped-def]
    seed = admin(sandbox, "tokens", {"realm_id": REALM})["refresh_token"]
    qbo = client(sandbox, tokens(sandbox, engine, seed))
    qbo.create("Customer", {"DisplayName": "Versioned"}, "rid-7")
    qbo.query("SELECT * FROM Customer", "Customer")
    log = [r for r in admin(sandbox, "requests")["requests"] if r["path"].startswith("/v3/")]
    assert {r["minorversion"] for r in log} == {"75"}
    assert [r["requestid"] for r in log if r["method"] == "POST" and r["path"].endswith("/customer")] == ["rid-7"]


def test_no_secret_in_logs(sandbox: SandboxServer, engine, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from ttsync.logging_setup import configure_logging

    configure_logging("DEBUG", "json")
    seed = admin(sandbox, "tokens", {"realm_id": REALM})["refresh_token"]
    store = tokens(sandbox, engine, seed)
    qbo = client(sandbox, store)
    qbo.query("SELECT * FROM Item", "Item")
    state = store.state()
    err = capsys.readouterr().err
    assert "access_token_refreshed" in err and "qbo_call" in err
    assert state is not None
    for secret in (seed, state.refresh_token, state.access_token or "", "ttsync-local-secret", "test-secret"):
        assert secret not in err
    configure_logging("INFO", "json")


def test_a_query_without_an_entity_name_returns_rows(sandbox: SandboxServer, engine) -> None:  # type: ignore[no-untyped-def]
    """It returned QBO's lists themselves (a list of lists) where its type says rows."""
    seed = admin(sandbox, "tokens", {"realm_id": REALM})["refresh_token"]
    rows = client(sandbox, tokens(sandbox, engine, seed)).query("SELECT * FROM Item")
    assert rows and all(isinstance(r, dict) and r.get("Id") for r in rows)


def test_a_short_lived_access_token_is_kept_until_close_to_its_expiry(sandbox: SandboxServer,  # type: ignore[no-untyped-def]
                                                                      engine) -> None:
    """With a fixed one-minute margin, a token living 15 s was refreshed (and the refresh token rotated) before
    every request. The margin is a tenth of the token's life, a minute at most."""
    from consumer.token_store import refresh_margin_s

    assert (refresh_margin_s(3600), refresh_margin_s(15), refresh_margin_s(0)) == (60, 1.5, 0)
    admin(sandbox, "config", {"access_token_lifetime_s": 15})
    try:
        seed = admin(sandbox, "tokens", {"realm_id": REALM})["refresh_token"]
        qbo = client(sandbox, tokens(sandbox, engine, seed))
        for _ in range(20):
            qbo.query("SELECT * FROM Item", "Item")
        assert admin(sandbox, "stats")["token_refreshes"] == 1
        # another process reads the stored token and keeps it as well
        other = client(sandbox, tokens(sandbox, engine, seed))
        for _ in range(5):
            other.query("SELECT * FROM Item", "Item")
        assert admin(sandbox, "stats")["token_refreshes"] == 1
    finally:
        admin(sandbox, "config", {"access_token_lifetime_s": 3600})
