"""A bare HTTP client for talking to a QBO-shaped server in tests (the sandbox, or Intuit's)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import requests


@dataclass
class QboTestClient:
    base_url: str
    token_url: str
    realm: str
    client_id: str
    client_secret: str
    refresh_token: str
    access_token: str | None = None
    session: requests.Session = field(default_factory=requests.Session)

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()

    def refresh(self) -> requests.Response:
        resp = self.session.post(
            self.token_url,
            data={"grant_type": "refresh_token", "refresh_token": self.refresh_token},
            headers={"Authorization": self.basic(), "Accept": "application/json",
                     "Content-Type": "application/x-www-form-urlencoded"},
            timeout=30,
        )
        if resp.status_code == 200:
            body = resp.json()
            self.access_token = body["access_token"]
            self.refresh_token = body["refresh_token"]
        return resp

    def headers(self) -> dict[str, str]:
        if self.access_token is None:
            self.refresh().raise_for_status()
        return {"Authorization": f"Bearer {self.access_token}", "Accept": "application/json",
                "Content-Type": "application/json"}

    def url(self, path: str) -> str:
        return f"{self.base_url}/v3/company/{self.realm}/{path}"

    def post(self, resource: str, body: Any, timeout: float = 30, **params: str) -> requests.Response:
        params.setdefault("minorversion", "75")
        return self.session.post(self.url(resource), json=body, params=params, headers=self.headers(),
                                 timeout=timeout)

    def get(self, path: str, **params: str) -> requests.Response:
        params.setdefault("minorversion", "75")
        return self.session.get(self.url(path), params=params, headers=self.headers(), timeout=30)

    def query(self, sql: str, method: str = "GET") -> requests.Response:
        if method == "POST":
            return self.session.post(self.url("query"), data=sql.encode(), params={"minorversion": "75"},
                                     headers={**self.headers(), "Content-Type": "application/text"}, timeout=30)
        return self.get("query", query=sql)

    def create(self, resource: str, body: dict[str, Any], **params: str) -> dict[str, Any]:
        resp = self.post(resource, body, **params)
        assert resp.status_code == 200, resp.text
        return next(v for k, v in resp.json().items() if k != "time")

    def fault_code(self, resp: requests.Response) -> str:
        return resp.json()["Fault"]["Error"][0]["code"]
