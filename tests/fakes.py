"""In-memory stand-ins for the I/O ports, for unit tests (integration tests use the real things)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from consumer.errors import QboUnavailable
from consumer.qbo_faults import read_answer
from producer.kafka_publisher import OutRecord
from ttsync.qbo_sandbox.company import Company
from ttsync.qbo_sandbox.oauth import SANDBOX_CLIENT_ID, AccessToken
from ttsync.qbo_sandbox.server import Api, SandboxConfig, SandboxState


class StubPublisher:
    """Records what would have been sent; ``fail_when`` decides per record whether the broker refuses it."""

    def __init__(self, fail_when: Callable[[OutRecord], BaseException | None] | None = None) -> None:
        self.sent: list[OutRecord] = []
        self.fail_when = fail_when
        self.closed = False

    def send(self, records: Sequence[OutRecord]) -> list[BaseException | None]:
        results: list[BaseException | None] = []
        for r in records:
            err = self.fail_when(r) if self.fail_when else None
            if err is None:
                self.sent.append(r)
            results.append(err)
        return results

    def wait(self, handle: list[BaseException | None]) -> list[BaseException | None]:
        return handle

    def close(self) -> None:
        self.closed = True


class InMemoryQbo:
    """``consumer.qbo_port.QboPort`` in-process: the sandbox's QBO (its company model, requestid cache and Faults)
    without HTTP, tokens or rate limits, its answers read by the same ``consumer.qbo_faults`` as the real client's.

    ``lose_answer("create", "Customer", nth=2)``: the second such call from now happens in QBO, and its answer is
    lost (a timeout after QBO applied it)."""

    def __init__(self, realm: str = "9130000000000001", **config: Any) -> None:
        self.state = SandboxState(SandboxConfig(throttle_enabled=False, **config))
        self.api = Api(self.state)
        self.realm = realm
        self.state.authority.access_tokens["AT-in-memory"] = AccessToken(SANDBOX_CLIENT_ID, realm, float("inf"))
        self._lost: dict[tuple[str, str], list[int]] = {}  # countdowns to the calls whose answer is lost
        self.calls: list[tuple[str, str]] = []  # (operation, entity), in order

    @property
    def company(self) -> Company:
        return self.state.company(self.realm)

    def lose_answer(self, operation: str, entity: str, nth: int = 1) -> None:
        self._lost.setdefault((operation, entity), []).append(nth)

    def _call(self, operation: str, entity: str, method: str, path: str, *, params: dict[str, str] | None = None,
              body: Any = None, text: str | None = None) -> dict[str, Any]:
        self.calls.append((operation, entity))
        data = json.dumps(body).encode() if body is not None else (text or "").encode()
        reply = self.api.handle(method, f"/v3/company/{self.realm}/{path}", {"minorversion": "75", **(params or {})},
                                data, {"authorization": "Bearer AT-in-memory"})
        answer = read_answer(reply.status, reply.body if isinstance(reply.body, str) else json.dumps(reply.body),
                             retry_after=reply.headers.get("Retry-After"))
        countdowns = self._lost.get((operation, entity), [])
        countdowns[:] = [n - 1 for n in countdowns]
        if 0 in countdowns:
            countdowns.remove(0)
            raise QboUnavailable(f"in-memory QBO: the answer to {operation} {entity} was lost")
        if answer.error is not None:
            raise answer.error
        return answer.body

    def create(self, entity: str, body: dict[str, Any], requestid: str) -> dict[str, Any]:
        return dict(self._call("create", entity, "POST", entity.lower(), params={"requestid": requestid},
                               body=body)[entity])

    def update(self, entity: str, body: dict[str, Any], requestid: str) -> dict[str, Any]:
        return dict(self._call("update", entity, "POST", entity.lower(), params={"requestid": requestid},
                               body=body)[entity])

    def read(self, entity: str, qbo_id: str) -> dict[str, Any]:
        return dict(self._call("read", entity, "GET", f"{entity.lower()}/{qbo_id}")[entity])

    def void(self, entity: str, qbo_id: str, sync_token: str, requestid: str) -> dict[str, Any]:
        params = {"operation": "update", "include": "void"} if entity == "Payment" else {"operation": "void"}
        body = {"Id": qbo_id, "SyncToken": sync_token, **({"sparse": True} if entity == "Payment" else {})}
        return dict(self._call("void", entity, "POST", entity.lower(), params={**params, "requestid": requestid},
                               body=body)[entity])

    def delete(self, entity: str, qbo_id: str, sync_token: str, requestid: str) -> dict[str, Any]:
        return dict(self._call("delete", entity, "POST", entity.lower(),
                               params={"operation": "delete", "requestid": requestid},
                               body={"Id": qbo_id, "SyncToken": sync_token})[entity])

    def query(self, sql: str, entity: str = "") -> list[dict[str, Any]]:
        response = self._call("query", entity, "POST", "query", text=sql).get("QueryResponse") or {}
        return list(response.get(entity, [])) if entity else [v for v in response.values() if isinstance(v, list)]

    def batch(self, items: list[dict[str, Any]], requestid: str | None = None) -> list[dict[str, Any]]:
        params = {"requestid": requestid} if requestid else {}
        return list(self._call("batch", "Batch", "POST", "batch", params=params,
                               body={"BatchItemRequest": items}).get("BatchItemResponse", []))
