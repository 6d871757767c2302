"""The sandbox's OAuth 2.0 authority: Intuit's token endpoint behaviour, rotation and expiry included."""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field

SANDBOX_CLIENT_ID = "ttsync-local"
SANDBOX_CLIENT_SECRET = "ttsync-local-secret"
"""The sandbox's built-in app: public (every checkout has it), so ttsync.settings refuses it for any other QBO."""


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


@dataclass
class RefreshToken:
    client_id: str
    realm_id: str
    expires_at: float
    revoked: bool = False
    rotated: bool = False


@dataclass
class AccessToken:
    client_id: str
    realm_id: str
    expires_at: float


@dataclass
class TokenAuthority:
    clients: dict[str, str] = field(default_factory=lambda: {SANDBOX_CLIENT_ID: SANDBOX_CLIENT_SECRET})
    access_lifetime_s: float = 3600.0
    refresh_lifetime_s: float = 100 * 24 * 3600.0
    rotate: str = "always"  # "always": each refresh returns a new refresh token; "never": the same one
    refresh_tokens: dict[str, RefreshToken] = field(default_factory=dict)
    access_tokens: dict[str, AccessToken] = field(default_factory=dict)
    codes: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # code -> (client, realm, redirect)
    refreshes: int = 0

    def _client(self, authorization: str | None) -> str:
        if not authorization or not authorization.startswith("Basic "):
            raise OAuthError("invalid_client", "client authentication failed", 401)
        try:
            client_id, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError) as exc:
            raise OAuthError("invalid_client", "client authentication failed", 401) from exc
        if self.clients.get(client_id) != secret:
            raise OAuthError("invalid_client", "client authentication failed", 401)
        return client_id

    def issue_refresh_token(self, client_id: str, realm_id: str) -> str:
        token = "RT1-" + secrets.token_urlsafe(32)
        self.refresh_tokens[token] = RefreshToken(client_id, realm_id, time.time() + self.refresh_lifetime_s)
        return token

    def _grant(self, client_id: str, realm_id: str, refresh: str) -> dict[str, object]:
        access = "AT-" + secrets.token_urlsafe(48)
        self.access_tokens[access] = AccessToken(client_id, realm_id, time.time() + self.access_lifetime_s)
        rt = self.refresh_tokens[refresh]
        return {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "bearer",
            "expires_in": int(self.access_lifetime_s),
            "x_refresh_token_expires_in": int(rt.expires_at - time.time()),
        }

    def token(self, form: dict[str, str], authorization: str | None) -> dict[str, object]:
        client_id = self._client(authorization)
        grant = form.get("grant_type")
        if grant == "refresh_token":
            presented = form.get("refresh_token", "")
            rt = self.refresh_tokens.get(presented)
            if rt is None or rt.revoked or rt.rotated or rt.expires_at < time.time() or rt.client_id != client_id:
                raise OAuthError("invalid_grant", "Token has been expired or revoked.")
            self.refreshes += 1
            if self.rotate == "always":
                rt.rotated = True
                presented = self.issue_refresh_token(client_id, rt.realm_id)
            else:
                rt.expires_at = time.time() + self.refresh_lifetime_s  # rolling expiry
            return self._grant(client_id, rt.realm_id, presented)
        if grant == "authorization_code":
            code = self.codes.pop(form.get("code", ""), None)
            if code is None or code[0] != client_id or code[2] != form.get("redirect_uri"):
                raise OAuthError("invalid_grant", "Invalid authorization code or redirect_uri.")
            return self._grant(client_id, code[1], self.issue_refresh_token(client_id, code[1]))
        raise OAuthError("unsupported_grant_type", f"grant_type {grant!r} is not supported")

    def authorize(self, client_id: str, redirect_uri: str, realm_id: str) -> str:
        if client_id not in self.clients:
            raise OAuthError("invalid_client", "unknown client_id", 401)
        code = "AB11" + secrets.token_urlsafe(24)
        self.codes[code] = (client_id, realm_id, redirect_uri)
        return code

    def revoke(self, token: str, authorization: str | None) -> None:
        self._client(authorization)
        if token in self.refresh_tokens:
            self.refresh_tokens[token].revoked = True
            for at, info in list(self.access_tokens.items()):
                if info.realm_id == self.refresh_tokens[token].realm_id:
                    del self.access_tokens[at]
        self.access_tokens.pop(token, None)

    def check(self, authorization: str | None, realm_id: str) -> bool:
        if not authorization or not authorization.startswith("Bearer "):
            return False
        info = self.access_tokens.get(authorization[7:].strip())
        return info is not None and info.realm_id == realm_id and info.expires_at > time.time()

    def expire_access_tokens(self) -> int:
        for info in self.access_tokens.values():
            info.expires_at = 0
        return len(self.access_tokens)
