"""``ttsync webhook``: Intuit's webhook deliveries into ``<prefix>.qbo.changes``.

Per delivery: refuse what is too large (413) before reading it, refuse a missing or wrong ``intuit-signature``
(401, logged without the body), refuse what is not one of Intuit's payloads (400); write one record per entity
change of the imported kinds and answer 200 only once the broker acknowledged every one. A broker that does not
acknowledge gets a 503: Intuit delivers again, and a change applied twice is applied once (the importer dedupes by
the entity's SyncToken)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from importer.notifications import IMPORTED_ENTITIES, NotificationError, parse_delivery, signature_valid
from schemas.kafka_client import OutRecord

log = structlog.get_logger("ttsync.webhook")

# Send the records, wait for the broker: per record None or the error (producer.kafka_publisher's port).
Publish = Callable[[Sequence[OutRecord]], list[BaseException | None]]


class WebhookReceiver:
    def __init__(self, publish: Publish, topic: str, verifier_token: str, *, host: str = "127.0.0.1",
                 port: int = 0, max_body_bytes: int = 1_048_576, on_close: Callable[[], None] = lambda: None) -> None:
        if not verifier_token:
            raise ValueError("a webhook receiver without a verifier token would take anyone's deliveries")
        self.publish = publish
        self.on_close = on_close  # e.g. the publisher's close: a producer left open keeps fetching the topic's
        # metadata, and a broker that creates topics on demand brings a deleted one back
        self.topic = topic
        self.verifier_token = verifier_token
        self.max_body_bytes = max_body_bytes
        self.stats = {"accepted": 0, "refused_signature": 0, "refused_payload": 0, "refused_size": 0,
                      "broker_failed": 0, "changes": 0, "ignored": 0}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # structured logs only
                pass

            def do_GET(self) -> None:
                self._answer(200 if self.path in ("/healthz", "/livez") else 404, b"ok")

            def do_POST(self) -> None:
                status, text = receiver.receive(self.headers.get("Content-Length"),
                                                self.headers.get("intuit-signature"), self.rfile.read)
                self._answer(status, text.encode())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host.decode() if isinstance(host, bytes) else host}:{port}"

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.stats[name] += n

    def receive(self, length: str | None, sig: str | None, read: Callable[[int], bytes]) -> tuple[int, str]:
        """One delivery: (HTTP status, answer text). Pure of HTTP plumbing, so a test can drive it directly."""
        try:
            size = int(length or "")
        except ValueError:
            return 411, "Content-Length required"
        if size < 0 or size > self.max_body_bytes:
            self._count("refused_size")
            log.warning("webhook_refused", reason="too large", bytes=size, limit=self.max_body_bytes)
            return 413, "delivery too large"
        body = read(size)
        if not signature_valid(body, sig, self.verifier_token):
            self._count("refused_signature")
            log.warning("webhook_refused", reason="missing or wrong intuit-signature", bytes=len(body))
            return 401, "signature refused"
        try:
            changes = parse_delivery(body)
        except NotificationError as exc:
            self._count("refused_payload")
            log.warning("webhook_refused", reason=str(exc)[:300], bytes=len(body))
            return 400, "not an Intuit webhook payload"
        wanted = [c for c in changes if c.entity in IMPORTED_ENTITIES]
        self._count("ignored", len(changes) - len(wanted))
        records = [c.record(self.topic) for c in wanted]
        errors = [e for e in self.publish(records) if e is not None] if records else []
        if errors:
            self._count("broker_failed")
            log.error("webhook_not_stored", changes=len(records), error=repr(errors[0])[:300],
                      action="answered 503: Intuit delivers again")
            return 503, "not stored, deliver again"
        self._count("accepted")
        self._count("changes", len(records))
        log.info("webhook_accepted", changes=len(records), ignored=len(changes) - len(wanted))
        return 200, "ok"

    def start(self) -> WebhookReceiver:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="ttsync-webhook", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        if self._thread is not None:
            self._thread.join(5)
        self.close()

    def close(self) -> None:
        """After serving: the socket, then what the receiver was given to close."""
        self.httpd.server_close()
        self.on_close()
