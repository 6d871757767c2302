"""QBO OAuth tokens at rest: encrypted with TTSYNC_SECRET_KEY, refreshed by one process at a time.

Intuit rotates refresh tokens: the newest must be stored before anything else happens, and two consumers
must never refresh at once (the loser would present a rotated-away token and get ``invalid_grant``). So the
refresh runs while holding the token row's lock; a process that waited re-reads the row and uses the token
the winner stored.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
import structlog
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import Engine, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from consumer.errors import ConfigurationError, QboUnavailable, ReconnectNeeded
from consumer.state_db import begin, connect
from consumer.state_tables import oauth_tokens

log = structlog.get_logger("ttsync.qbo.tokens")


# scrypt's cost for a passphrase (RFC 7914; 2**15 x 8 takes 32 MiB and ~0.1 s a guess): a stolen token row
# no longer falls to a dictionary at 91,000 guesses a second, as the former single SHA-256 did.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
KDF_PREFIX = "scrypt1$"  # stored values: scrypt1$<salt, urlsafe base64>$<Fernet token>
MIN_PASSPHRASE = 16
# What shipped examples and tutorials put where a key belongs (a key that starts so, in any case, is refused).
PLACEHOLDERS = ("change-me", "change_me", "changeme", "replace-with", "replace-me", "replace_me", "replaceme",
                "your-", "your_", "<", "example", "xxxx", "todo", "secret", "password")


class TokenCipher:
    """Encrypts tokens at rest with TTSYNC_SECRET_KEY: a Fernet key is used as it is; any other secret is a
    passphrase, stretched by scrypt with a random salt stored beside each value. Values stored by earlier
    versions (a passphrase through one SHA-256) are still read, and written anew in the new form."""

    def __init__(self, secret_key: str) -> None:
        self._secret = secret_key.encode()
        try:
            self._fernet: Fernet | None = Fernet(self._secret)
        except (ValueError, TypeError):
            self._fernet = None
        self._legacy = Fernet(base64.urlsafe_b64encode(hashlib.sha256(self._secret).digest()))
        self._salt = os.urandom(16)
        self._derived: dict[bytes, Fernet] = {}

    def _kdf(self, salt: bytes) -> Fernet:
        if salt not in self._derived:
            key = hashlib.scrypt(self._secret, salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 2**20,
                                 dklen=32)
            self._derived[salt] = Fernet(base64.urlsafe_b64encode(key))
        return self._derived[salt]

    def encrypt(self, value: str) -> str:
        if self._fernet is not None:
            return self._fernet.encrypt(value.encode()).decode()
        token = self._kdf(self._salt).encrypt(value.encode()).decode()
        return f"{KDF_PREFIX}{base64.urlsafe_b64encode(self._salt).decode()}${token}"

    def decrypt(self, value: str) -> str:
        """Raises InvalidToken when the key is not the one the value was stored with."""
        if value.startswith(KDF_PREFIX):
            salt, _, token = value[len(KDF_PREFIX):].partition("$")
            try:
                cipher = self._kdf(base64.urlsafe_b64decode(salt.encode()))
            except (ValueError, TypeError) as exc:
                raise InvalidToken from exc
            return cipher.decrypt(token.encode()).decode()
        return (self._fernet or self._legacy).decrypt(value.encode()).decode()


def make_cipher(secret_key: str) -> TokenCipher:
    """The cipher of TTSYNC_SECRET_KEY; refuses an empty, short or placeholder passphrase (ConfigurationError)."""
    key = secret_key.strip()
    cipher = TokenCipher(key)
    if cipher._fernet is None:
        lowered = key.lower()
        if len(key) < MIN_PASSPHRASE or lowered.startswith(PLACEHOLDERS) or len(set(lowered)) < 4:
            raise ConfigurationError(
                f"TTSYNC_SECRET_KEY is too weak to encrypt QBO tokens (empty, under {MIN_PASSPHRASE} characters, or "
                "a placeholder): use a Fernet key (python3 -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())') or a long random passphrase")
    return cipher


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:32]


MAX_REFRESH_MARGIN_S = 60.0


def refresh_margin_s(lifetime_s: float) -> float:
    """How long before its expiry an access token is replaced: a minute for QBO's hour-long tokens, a tenth of the
    life of a shorter one. A fixed minute had a 15-second token refreshed (and the refresh token rotated) before
    every request."""
    return min(MAX_REFRESH_MARGIN_S, max(0.0, lifetime_s) / 10)


@dataclass
class TokenState:
    access_token: str | None
    access_expires_at: dt.datetime | None
    refresh_token: str
    rotations: int
    last_success_at: dt.datetime | None
    refresh_expires_at: dt.datetime | None


class TokenStore:
    def __init__(self, engine: Engine, realm_id: str, cipher: TokenCipher, *, token_url: str, client_id: str,
                 client_secret: str, seed_refresh_token: str | None = None, timeout_s: float = 30.0) -> None:
        self.engine = engine
        self.realm_id = realm_id
        self.cipher = cipher
        self.token_url = token_url
        self.client_id = client_id
        self.client_secret = client_secret
        self.seed_refresh_token = seed_refresh_token
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._access: tuple[str, float] | None = None  # (token, monotonic expiry)
        self._last_success_write = 0.0
        self.refreshes = 0
        self._session = requests.Session()

    # -- encryption ----------------------------------------------------------------------------------

    def _enc(self, value: str) -> str:
        return self.cipher.encrypt(value)

    def _dec(self, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return self.cipher.decrypt(value)
        except InvalidToken as exc:
            raise ConfigurationError("TTSYNC_SECRET_KEY does not decrypt the stored QBO tokens: set it to the key "
                                     "they were stored with (the tokens themselves are fine)") from exc

    # -- reads and writes ----------------------------------------------------------------------------

    def state(self) -> TokenState | None:
        with connect(self.engine) as conn:
            row = conn.execute(select(oauth_tokens).where(oauth_tokens.c.realm_id == self.realm_id)).first()
        if row is None:
            return None
        return TokenState(self._dec(row.access_token_enc), _aware(row.access_expires_at),
                          self._dec(row.refresh_token_enc) or "", row.rotations, _aware(row.last_success_at),
                          _aware(row.refresh_expires_at))

    def store_tokens(self, *, refresh_token: str, access_token: str | None = None, expires_in: float | None = None,
                     refresh_expires_in: float | None = None, seed: str | None = None) -> None:
        """Store a token set (``ttsync qbo connect`` and tests); replaces what was there."""
        now = _now()
        values: dict[str, Any] = {
            "refresh_token_enc": self._enc(refresh_token),
            "access_token_enc": self._enc(access_token) if access_token else None,
            "access_expires_at": now + dt.timedelta(seconds=expires_in) if expires_in else None,
            "refresh_expires_at": now + dt.timedelta(seconds=refresh_expires_in) if refresh_expires_in else None,
            "seed_fingerprint": fingerprint(seed) if seed else None,
            "updated_at": now,
        }
        self._write_row(values, replace=True)
        self._access = None

    def _write_row(self, values: dict[str, Any], *, replace: bool) -> None:
        """Insert the realm's row; when it exists, replace it or (``replace=False``) leave it: two consumers
        seeding at once must not both insert."""
        with begin(self.engine) as conn:
            insert_fn = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            stmt = insert_fn(oauth_tokens).values(realm_id=self.realm_id, rotations=0, **values)
            if replace:
                stmt = stmt.on_conflict_do_update(index_elements=[oauth_tokens.c.realm_id], set_=values)
            else:
                stmt = stmt.on_conflict_do_nothing(index_elements=[oauth_tokens.c.realm_id])
            conn.execute(stmt)

    def _seed_if_needed(self) -> None:
        seed = self.seed_refresh_token
        with connect(self.engine) as conn:
            row = conn.execute(select(oauth_tokens.c.seed_fingerprint).where(
                oauth_tokens.c.realm_id == self.realm_id)).first()
        if row is None:
            if not seed:
                raise ReconnectNeeded(f"no QBO tokens for realm {self.realm_id}: set TTSYNC_QBO_REFRESH_TOKEN "
                                      "or run `ttsync qbo connect`")
            self._write_row({"refresh_token_enc": self._enc(seed), "seed_fingerprint": fingerprint(seed),
                             "updated_at": _now()}, replace=False)
        elif seed and row.seed_fingerprint != fingerprint(seed):
            # The operator configured a new first token (a reconnect): it wins over the rotated one we hold.
            log.info("refresh_token_reseeded", realm=self.realm_id)
            self.store_tokens(refresh_token=seed, seed=seed)

    # -- the access token ----------------------------------------------------------------------------

    def access_token(self) -> str:
        cached = self._access
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        return self.refresh(failed_token=None)

    def refresh(self, *, failed_token: str | None) -> str:
        """A valid access token: the stored one if another process refreshed meanwhile, else a new one."""
        with self._lock:
            cached = self._access
            if cached is not None and cached[0] != failed_token and cached[1] > time.monotonic():
                return cached[0]
            self._seed_if_needed()
            with begin(self.engine) as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT 1 FROM ttsync_oauth_tokens WHERE realm_id = :r FOR UPDATE"),
                                 {"r": self.realm_id})
                else:  # SQLite: take the write lock now, so the read below is the latest
                    conn.execute(update(oauth_tokens).where(oauth_tokens.c.realm_id == self.realm_id)
                                 .values(realm_id=self.realm_id))
                row = conn.execute(select(oauth_tokens).where(oauth_tokens.c.realm_id == self.realm_id)).one()
                stored = self._dec(row.access_token_enc)
                expires = _aware(row.access_expires_at)
                issued = _aware(row.updated_at)
                if stored and stored != failed_token and expires and issued:
                    margin = refresh_margin_s((expires - issued).total_seconds())
                    if (expires - _now()).total_seconds() > margin:
                        self._remember(stored, expires, margin)
                        return stored
                old_refresh = self._dec(row.refresh_token_enc) or ""
                body = self._call_token_endpoint(old_refresh)
                new_refresh = str(body.get("refresh_token") or old_refresh)
                now = _now()
                lifetime = float(body.get("expires_in", 3600))
                expires = now + dt.timedelta(seconds=lifetime)
                conn.execute(update(oauth_tokens).where(oauth_tokens.c.realm_id == self.realm_id).values(
                    refresh_token_enc=self._enc(new_refresh),
                    access_token_enc=self._enc(body["access_token"]),
                    access_expires_at=expires,
                    refresh_expires_at=now + dt.timedelta(seconds=float(body.get("x_refresh_token_expires_in", 0)))
                    if body.get("x_refresh_token_expires_in") else row.refresh_expires_at,
                    rotations=row.rotations + (1 if new_refresh != old_refresh else 0),
                    updated_at=now,
                ))
            self.refreshes += 1
            log.info("access_token_refreshed", realm=self.realm_id, rotated=new_refresh != old_refresh)
            self._remember(body["access_token"], expires, refresh_margin_s(lifetime))
            return str(body["access_token"])

    def _remember(self, token: str, expires: dt.datetime, margin_s: float) -> None:
        seconds_left = (expires - _now()).total_seconds() - margin_s
        self._access = (token, time.monotonic() + max(seconds_left, 0))

    def _call_token_endpoint(self, refresh_token: str) -> dict[str, Any]:
        try:
            resp = self._session.post(
                self.token_url,
                data={"grant_type": "refresh_token", "refresh_token": refresh_token},
                auth=(self.client_id, self.client_secret),
                headers={"Accept": "application/json"},
                timeout=self.timeout_s,
            )
        except requests.RequestException as exc:
            raise QboUnavailable(f"token endpoint unreachable: {type(exc).__name__}") from exc
        if resp.status_code == 200:
            # A captive portal, a proxy or an outage page can answer 200 with HTML: that is the endpoint failing,
            # not the records (which an unclassified JSON error would once have dead-lettered, every one).
            try:
                body = resp.json()
            except ValueError:
                body = None
            if not isinstance(body, dict) or not body.get("access_token") or not body.get("refresh_token"):
                kind = resp.headers.get("Content-Type", "?").split(";")[0]
                raise QboUnavailable(f"token endpoint answered 200 without tokens ({kind}, {len(resp.content)} "
                                     "bytes): a proxy or an outage page?", code="token_endpoint_unavailable")
            return dict(body)
        try:
            error = resp.json().get("error", "")
        except ValueError:
            error = ""
        if error == "invalid_grant":
            raise ReconnectNeeded("QBO refused the refresh token (invalid_grant: expired, revoked or rotated "
                                  "away): reconnect with `ttsync qbo connect`")
        if resp.status_code == 401 or error == "invalid_client":
            raise ReconnectNeeded("QBO refused the client credentials (invalid_client): check "
                                  "TTSYNC_QBO_CLIENT_ID / TTSYNC_QBO_CLIENT_SECRET")
        raise QboUnavailable(f"token endpoint answered {resp.status_code} {error}".strip())

    def mark_success(self) -> None:
        """Remember when QBO last answered a call (``ttsync qbo status``), at most once a minute."""
        if time.monotonic() - self._last_success_write < 60:
            return
        self._last_success_write = time.monotonic()
        with begin(self.engine) as conn:
            conn.execute(update(oauth_tokens).where(oauth_tokens.c.realm_id == self.realm_id)
                         .values(last_success_at=_now()))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
