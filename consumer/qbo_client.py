"""The QBO HTTP client: OAuth bearer with refresh, the shared rate limit, ``minorversion`` on every call,
``requestid`` on writes, and every failure translated into a typed error (consumer.errors) at this edge."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import requests
import structlog

from consumer.errors import QboUnavailable
from consumer.qbo_faults import read_answer
from consumer.rate_limit import RateLimiter
from consumer.token_store import TokenStore

log = structlog.get_logger("ttsync.qbo")

MINOR_VERSION = 75


class QboClient:
    def __init__(self, base_url: str, realm_id: str, tokens: TokenStore, limiter: RateLimiter, *,
                 minorversion: int = MINOR_VERSION, timeout_s: float = 30.0, throttle_default_wait_s: float = 60.0,
                 on_call: Callable[[str, str, str], None] | None = None,
                 batch_limiter: RateLimiter | None = None,
                 on_wait: Callable[[float], None] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.realm_id = realm_id
        self.tokens = tokens
        self.limiter = limiter
        self.minorversion = minorversion
        self.timeout_s = timeout_s
        self.throttle_default_wait_s = throttle_default_wait_s
        self.session = requests.Session()
        self.on_call = on_call  # (entity, operation, outcome) -> None, for metrics
        self.batch_limiter = batch_limiter  # QBO also limits batch requests (40/min per realm and app)
        self.on_wait = on_wait  # seconds spent waiting for the realm's budget, for metrics
        self.calls = 0
        self._batches_reserved = 0

    # -- the one request path ------------------------------------------------------------------------

    def request(self, method: str, path: str, *, params: dict[str, str] | None = None, json_body: Any = None,
                text_body: str | None = None, requestid: str | None = None, entity: str = "",
                operation: str = "") -> dict[str, Any]:
        query = {"minorversion": str(self.minorversion), **(params or {})}
        if requestid:
            query["requestid"] = requestid
        url = f"{self.base_url}/v3/company/{self.realm_id}/{path}"
        for attempt in (1, 2):
            token = self.tokens.access_token()
            waited = self.limiter.acquire()
            if waited and self.on_wait is not None:
                self.on_wait(waited)
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            data: bytes | None = None
            if json_body is not None:
                headers["Content-Type"] = "application/json"
                data = json.dumps(json_body).encode()
            elif text_body is not None:
                headers["Content-Type"] = "application/text"
                data = text_body.encode()
            started = time.monotonic()
            try:
                resp = self.session.request(method, url, params=query, data=data, headers=headers,
                                            timeout=self.timeout_s)
            except requests.RequestException as exc:
                self._count(entity, operation, "network_error")
                raise QboUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}"[:500]) from exc
            self.calls += 1
            log.debug("qbo_call", method=method, path=path, status=resp.status_code,
                      ms=round((time.monotonic() - started) * 1000, 1), requestid=requestid)
            if resp.status_code == 401 and attempt == 1:
                self._count(entity, operation, "unauthorized")
                self.tokens.refresh(failed_token=token)
                continue
            return self._result(resp, entity, operation)
        raise QboUnavailable(f"{method} {path}: 401 even with a fresh access token")

    def _result(self, resp: requests.Response, entity: str, operation: str) -> dict[str, Any]:
        answer = read_answer(resp.status_code, resp.content.decode("utf-8", "replace"),
                             retry_after=resp.headers.get("Retry-After"), default_wait_s=self.throttle_default_wait_s)
        self._count(entity, operation, answer.outcome)
        if answer.error is not None:
            raise answer.error
        self.tokens.mark_success()
        return answer.body

    def _count(self, entity: str, operation: str, outcome: str) -> None:
        if self.on_call is not None:
            self.on_call(entity, operation, outcome)

    # -- QBO operations ------------------------------------------------------------------------------

    def create(self, entity: str, body: dict[str, Any], requestid: str) -> dict[str, Any]:
        return _entity(self.request("POST", entity.lower(), json_body=body, requestid=requestid,
                                    entity=entity, operation="create"), entity)

    def update(self, entity: str, body: dict[str, Any], requestid: str) -> dict[str, Any]:
        return _entity(self.request("POST", entity.lower(), json_body=body, requestid=requestid,
                                    entity=entity, operation="update"), entity)

    def read(self, entity: str, qbo_id: str) -> dict[str, Any]:
        return _entity(self.request("GET", f"{entity.lower()}/{qbo_id}", entity=entity, operation="read"), entity)

    def delete(self, entity: str, qbo_id: str, sync_token: str, requestid: str) -> dict[str, Any]:
        return _entity(self.request("POST", entity.lower(), params={"operation": "delete"},
                                    json_body={"Id": qbo_id, "SyncToken": sync_token}, requestid=requestid,
                                    entity=entity, operation="delete"), entity)

    def void(self, entity: str, qbo_id: str, sync_token: str, requestid: str) -> dict[str, Any]:
        if entity == "Payment":  # QBO voids a payment with a sparse update that includes void
            params = {"operation": "update", "include": "void"}
            body: dict[str, Any] = {"Id": qbo_id, "SyncToken": sync_token, "sparse": True}
        else:
            params, body = {"operation": "void"}, {"Id": qbo_id, "SyncToken": sync_token}
        return _entity(self.request("POST", entity.lower(), params=params, json_body=body, requestid=requestid,
                                    entity=entity, operation="void"), entity)

    def query(self, sql: str, entity: str = "") -> list[dict[str, Any]]:
        body = self.request("POST", "query", text_body=sql, entity=entity, operation="query")
        response = body.get("QueryResponse") or {}
        if entity:
            return list(response.get(entity, []))
        return [row for rows in response.values() if isinstance(rows, list) for row in rows]

    def cdc(self, entities: list[str], changed_since: str) -> dict[str, Any]:
        return self.request("GET", "cdc", params={"entities": ",".join(entities), "changedSince": changed_since},
                            entity="CDC", operation="cdc")

    def reserve_batch(self) -> bool:
        if self.batch_limiter is None or self.batch_limiter.try_acquire():
            self._batches_reserved += 1
            return True
        return False

    def batch(self, items: list[dict[str, Any]], requestid: str | None = None) -> list[dict[str, Any]]:
        if self._batches_reserved:
            self._batches_reserved -= 1
        elif self.batch_limiter is not None:
            self.batch_limiter.acquire()
        body = self.request("POST", "batch", json_body={"BatchItemRequest": items}, requestid=requestid,
                            entity="Batch", operation="batch")
        return list(body.get("BatchItemResponse", []))


def _entity(body: dict[str, Any], entity: str) -> dict[str, Any]:
    """The entity in a 200 answer; an answer without it is QBO misbehaving (retry), not a refusal of the record."""
    found = body.get(entity)
    if not isinstance(found, dict):
        raise QboUnavailable(f"QBO answered 200 without the {entity}: {json.dumps(body)[:200]}")
    return found
