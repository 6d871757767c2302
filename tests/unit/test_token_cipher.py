"""Tokens at rest: a passphrase is stretched by scrypt with a stored salt (not one SHA-256), weak keys are
refused, a wrong key is a configuration error (exit 2) and never advice to reconnect, and tokens stored by
earlier versions are still read."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.fernet import Fernet, InvalidToken

from consumer.errors import ConfigurationError, ReconnectNeeded
from consumer.token_store import KDF_PREFIX, SCRYPT_N, TokenStore, make_cipher
from producer import migrate
from producer.database import make_engine

PASSPHRASE = "correct horse battery staple 42"


def test_a_passphrase_goes_through_scrypt_with_a_salt_stored_beside_the_value() -> None:
    cipher = make_cipher(PASSPHRASE)
    stored = cipher.encrypt("refresh-token-value")
    assert stored.startswith(KDF_PREFIX) and "refresh-token-value" not in stored
    salt_b64, _, token = stored[len(KDF_PREFIX):].partition("$")
    salt = base64.urlsafe_b64decode(salt_b64)
    key = hashlib.scrypt(PASSPHRASE.encode(), salt=salt, n=SCRYPT_N, r=8, p=1, maxmem=64 * 2**20, dklen=32)
    assert Fernet(base64.urlsafe_b64encode(key)).decrypt(token.encode()) == b"refresh-token-value"
    assert SCRYPT_N >= 2**15
    # The former derivation (one SHA-256 of the passphrase) no longer opens it.
    legacy = Fernet(base64.urlsafe_b64encode(hashlib.sha256(PASSPHRASE.encode()).digest()))
    with pytest.raises(InvalidToken):
        legacy.decrypt(token.encode())
    assert make_cipher(PASSPHRASE).decrypt(stored) == "refresh-token-value"  # another process, same key


def test_values_stored_by_earlier_versions_are_still_read() -> None:
    legacy = Fernet(base64.urlsafe_b64encode(hashlib.sha256(PASSPHRASE.encode()).digest()))
    assert make_cipher(PASSPHRASE).decrypt(legacy.encrypt(b"old-token").decode()) == "old-token"


def test_a_fernet_key_is_used_as_it_is() -> None:
    key = Fernet.generate_key()
    stored = make_cipher(key.decode()).encrypt("t")
    assert not stored.startswith(KDF_PREFIX) and Fernet(key).decrypt(stored.encode()) == b"t"


@pytest.mark.parametrize("weak", ["", "   ", "short-key", "change-me-to-a-long-random-secret",
                                  "REPLACE-WITH-A-LONG-RANDOM-SECRET", "secret-secret-secret", "aaaaaaaaaaaaaaaaaaaa"])
def test_weak_or_placeholder_keys_are_refused(weak: str) -> None:
    with pytest.raises(ConfigurationError, match="too weak"):
        make_cipher(weak)


def test_a_wrong_key_is_a_configuration_error_not_advice_to_reconnect(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'state.sqlite3'}")
    migrate.upgrade(engine)
    TokenStore(engine, "1", make_cipher(PASSPHRASE), token_url="http://127.0.0.1:1", client_id="c",
               client_secret="s").store_tokens(refresh_token="rt", access_token="at", expires_in=3600)
    other = TokenStore(engine, "1", make_cipher("another long random passphrase"), token_url="http://127.0.0.1:1",
                       client_id="c", client_secret="s")
    with pytest.raises(ConfigurationError) as err:
        other.state()
    assert not isinstance(err.value, ReconnectNeeded) and "reconnect" not in str(err.value).lower()


def test_a_long_passphrase_that_merely_contains_a_common_word_is_accepted() -> None:
    assert make_cipher("test-secret-passphrase-0123").decrypt(make_cipher("test-secret-passphrase-0123")
                                                             .encrypt("t")) == "t"
