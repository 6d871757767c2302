"""The sandbox's webhook deliveries, as Intuit makes them: every entity change of a company is announced to the
configured URL, signed (``intuit-signature``: base64 HMAC-SHA256 of the body with the verifier token), several
changes per delivery, in the classic ``eventNotifications`` shape or as a CloudEvents array. At least once: a
delivery not answered 2xx is sent again at the next round; ``webhook_duplicate_rate`` sends some twice and
``webhook_reverse_order`` lists a delivery's changes newest first, as the tests need."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import uuid
from typing import TYPE_CHECKING, Any

import requests
import structlog

if TYPE_CHECKING:
    from ttsync.qbo_sandbox.server import SandboxState

log = structlog.get_logger("ttsync.sandbox")

_CLOUD_VERBS = {"Create": "created", "Update": "updated", "Delete": "deleted", "Void": "voided", "Merge": "merged"}


def delivery_body(realm: str, changes: list[tuple[str, str, str, str]], shape: str) -> bytes:
    if shape == "cloudevents":
        return json.dumps([{
            "specversion": "1.0", "id": str(uuid.uuid4()), "source": "intuit.sandbox", "datacontenttype":
            "application/json", "type": f"qbo.{entity.lower()}.{_CLOUD_VERBS[op]}.v1", "time": updated,
            "intuitentityid": ident, "intuitaccountid": realm, "data": {}} for entity, ident, op, updated in changes
        ]).encode()
    return json.dumps({"eventNotifications": [{"realmId": realm, "dataChangeEvent": {"entities": [
        {"name": entity, "id": ident, "operation": op, "lastUpdated": updated}
        for entity, ident, op, updated in changes]}}]}).encode()


def sign(body: bytes, token: str) -> str:
    return base64.b64encode(hmac.new(token.encode(), body, hashlib.sha256).digest()).decode()


class WebhookDispatcher:
    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.pending: list[tuple[str, list[tuple[str, str, str, str]]]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="qbo-sandbox-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.state.config.webhook_interval_s):
            self.round()

    def round(self) -> None:
        """Collect what changed since the last round, then deliver (outside the lock: a slow receiver must not
        hold up the API) what is pending; what fails stays pending for the next round."""
        cfg = self.state.config
        with self.state.lock:
            for realm, company in self.state.companies.items():
                changes = company.take_changes()
                if changes and cfg.webhook_url:
                    self.pending.append((realm, changes[::-1] if cfg.webhook_reverse_order else changes))
        kept = []
        for realm, changes in self.pending:
            if not self._deliver(realm, changes):
                kept.append((realm, changes))
                self._count("webhook_retried")
            elif self.state.roll(cfg.webhook_duplicate_rate):
                self._deliver(realm, changes)
                self._count("webhook_duplicated")
        self.pending = kept

    def _deliver(self, realm: str, changes: list[tuple[str, str, str, str]]) -> bool:
        cfg = self.state.config
        body = delivery_body(realm, changes, cfg.webhook_format)
        headers = {"intuit-signature": sign(body, cfg.webhook_verifier_token), "Content-Type": "application/json"}
        try:
            answer = requests.post(cfg.webhook_url, data=body, headers=headers, timeout=10)
        except requests.RequestException as exc:
            log.info("webhook_delivery_failed", url=cfg.webhook_url, error=type(exc).__name__)
            return False
        self._count("webhook_delivered" if answer.ok else "webhook_refused")
        return answer.ok

    def _count(self, name: str) -> None:
        with self.state.lock:
            self.state.injected[name] += 1


def stats(state: SandboxState) -> dict[str, Any]:
    return {k: v for k, v in state.injected.items() if k.startswith("webhook_")}
