"""The import direction's intake: Intuit's webhook payloads (both shapes), the signature, the receiver's answers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
import requests

from importer.notifications import Change, NotificationError, changes_from_cdc, parse_delivery, signature
from importer.webhook import WebhookReceiver
from schemas.kafka_client import OutRecord

TOKEN = "verifier-token-of-the-intuit-app"
CLASSIC = {"eventNotifications": [{"realmId": "9130", "dataChangeEvent": {"entities": [
    {"name": "Payment", "id": "41", "operation": "Create", "lastUpdated": "2026-11-30T10:00:00.000Z"},
    {"name": "Invoice", "id": "7", "operation": "Void", "lastUpdated": "2026-11-30T10:00:01.000Z"},
    {"name": "Estimate", "id": "3", "operation": "Update", "lastUpdated": "2026-11-30T10:00:02.000Z"}]}}]}
CLOUD = [{"specversion": "1.0", "id": "0b4f-1", "source": "intuit.abc", "type": "qbo.payment.created.v1",
          "datacontenttype": "application/json", "time": "2026-11-30T10:00:00Z", "intuitentityid": "41",
          "intuitaccountid": "9130", "data": {}},
         {"specversion": "1.0", "id": "0b4f-2", "source": "intuit.abc", "type": "qbo.customer.updated.v1",
          "time": "2026-11-30T10:00:03Z", "intuitentityid": "5", "intuitaccountid": "9131", "data": {}}]


def test_both_payload_shapes_become_changes() -> None:
    classic = parse_delivery(json.dumps(CLASSIC).encode())
    assert [(c.realm_id, c.entity, c.entity_id, c.operation) for c in classic] == [
        ("9130", "Payment", "41", "Create"), ("9130", "Invoice", "7", "Void"), ("9130", "Estimate", "3", "Update")]
    cloud = parse_delivery(json.dumps(CLOUD).encode())
    assert [(c.realm_id, c.entity, c.entity_id, c.operation, c.notification_id) for c in cloud] == [
        ("9130", "Payment", "41", "Create", "0b4f-1"), ("9131", "Customer", "5", "Update", "0b4f-2")]
    assert cloud[0].key == b"9130:Payment:41" and Change.decode(cloud[0].encode()) == cloud[0]


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"eventNotifications": [{"dataChangeEvent": {}}]}',
                                  b'[{"specversion": "0.3"}]', b'[{"specversion": "1.0", "type": "qbo.x"}]',
                                  b'{"eventNotifications": [{"realmId": "1", "dataChangeEvent": {"entities": '
                                  b'[{"name": "Payment", "id": "1", "operation": "Explode"}]}}]}'])
def test_what_is_not_an_intuit_payload_is_refused(body: bytes) -> None:
    with pytest.raises(NotificationError):
        parse_delivery(body)


def test_a_cdc_answer_becomes_changes_deletions_included() -> None:
    answer = {"CDCResponse": [{"QueryResponse": [
        {"Payment": [{"Id": "41", "SyncToken": "0", "MetaData": {"LastUpdatedTime": "2026-11-30T10:00:00Z"}},
                     {"Id": "42", "status": "Deleted", "MetaData": {"LastUpdatedTime": "2026-11-30T10:01:00Z"}}],
         "startPosition": 1, "maxResults": 2}]}]}
    assert [(c.entity_id, c.operation, c.source) for c in changes_from_cdc("9130", answer)] == [
        ("41", "Update", "cdc"), ("42", "Delete", "cdc")]


class Broker:
    def __init__(self, fail: bool = False) -> None:
        self.records: list[OutRecord] = []
        self.fail = fail

    def publish(self, records: Sequence[OutRecord]) -> list[BaseException | None]:
        if self.fail:
            return [TimeoutError("no acknowledgement")] * len(records)
        self.records += records
        return [None] * len(records)


def post(receiver: WebhookReceiver, body: bytes, sig: str | None) -> int:
    headers = {"intuit-signature": sig} if sig is not None else {}
    return requests.post(f"{receiver.url}/webhooks/quickbooks", data=body, headers=headers, timeout=10).status_code


def test_the_receiver_stores_signed_deliveries_and_refuses_the_rest() -> None:
    broker = Broker()
    receiver = WebhookReceiver(broker.publish, "tt.qbo.changes", TOKEN, max_body_bytes=4096).start()
    try:
        body = json.dumps(CLASSIC).encode()
        assert post(receiver, body, None) == 401
        assert post(receiver, body, signature(body, "someone-elses-token")) == 401
        assert post(receiver, body + b" ", signature(body, TOKEN)) == 401  # the body changed after signing
        assert broker.records == []  # nothing refused reaches Kafka
        assert post(receiver, b"[1]", signature(b"[1]", TOKEN)) == 400
        big = b"[" + b" " * 5000 + b"]"
        assert post(receiver, big, signature(big, TOKEN)) == 413
        assert post(receiver, body, signature(body, TOKEN)) == 200
        assert [r.key for r in broker.records] == [b"9130:Payment:41", b"9130:Invoice:7"]  # no Estimate
        assert all(r.topic == "tt.qbo.changes" for r in broker.records)
        broker.fail = True
        assert post(receiver, body, signature(body, TOKEN)) == 503  # not acknowledged: Intuit delivers again
        assert receiver.stats["refused_signature"] == 3 and receiver.stats["accepted"] == 1
    finally:
        receiver.stop()


def test_stopping_the_receiver_closes_its_publisher() -> None:
    """A producer left open keeps fetching its topic's metadata: a broker that creates topics on demand then
    brings back a topic the demo deleted."""
    closed: list[bool] = []
    WebhookReceiver(Broker().publish, "t", TOKEN, on_close=lambda: closed.append(True)).start().stop()
    assert closed == [True]


def test_a_receiver_without_a_verifier_token_is_refused() -> None:
    with pytest.raises(ValueError, match="verifier token"):
        WebhookReceiver(Broker().publish, "t", "")


@pytest.mark.parametrize(("command", "env", "says"), [
    ("consume", {"TTSYNC_SYNC_DIRECTION": "import"}, "nothing goes from TimeTracker to QBO"),
    ("import", {"TTSYNC_SYNC_DIRECTION": "export"}, "is for the import direction"),
    ("webhook", {"TTSYNC_SYNC_DIRECTION": "both", "TTSYNC_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
     "TTSYNC_QBO_WEBHOOK_VERIFIER_TOKEN"),
])
def test_a_command_of_the_other_direction_ends_in_one_line_with_exit_2(command: str, env: dict[str, str],
                                                                        says: str, tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    args = [sys.executable, "-m", "ttsync", command] + (["--no-create-topics"] if command == "webhook" else [])
    done = subprocess.run(args, env={**os.environ, "HOME": str(tmp_path), **env}, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert says in " ".join(done.stderr.split())
