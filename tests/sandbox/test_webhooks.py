"""The sandbox's webhook deliveries, as Intuit makes them: signed, several changes per delivery, both shapes, at
least once (a refused delivery comes again), duplicates on request; and the admin action that receives a payment."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from importer.notifications import Change
from importer.webhook import WebhookReceiver
from schemas.kafka_client import OutRecord
from tests.sandbox.conftest import admin, client_for, invoice_body, item_id, new_customer
from ttsync.qbo_sandbox.server import SandboxConfig, SandboxServer

TOKEN = "sandbox-webhook-verifier-token"


class Broker:
    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.refuse = 0

    def publish(self, records: Sequence[OutRecord]) -> list[BaseException | None]:
        if self.refuse:
            self.refuse -= 1
            return [TimeoutError("broker away")] * len(records)
        self.changes += [Change.decode(r.value) for r in records]
        return [None] * len(records)


def wait_for(check: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_payment_received_in_qbo_is_announced_signed_and_again_until_accepted() -> None:
    broker = Broker()
    receiver = WebhookReceiver(broker.publish, "t.qbo.changes", TOKEN).start()
    with SandboxServer(SandboxConfig(port=0, webhook_url=f"{receiver.url}/hooks", webhook_interval_s=0.05)) as box:
        try:
            qbo = client_for(box)
            customer = new_customer(qbo)
            invoice = qbo.create("invoice", invoice_body(customer["Id"], item_id(qbo)))
            broker.refuse = 1  # the first delivery is not acknowledged: 503, and Intuit delivers again
            paid = admin(box, "realms/9130000000000001/receive-payment", {"invoice_id": invoice["Id"]})["Payment"]
            wait_for(lambda: any(c.entity == "Payment" for c in broker.changes))
            kinds = [(c.entity, c.operation) for c in broker.changes]
            assert ("Payment", "Create") in kinds and ("Invoice", "Update") in kinds  # its balance changed
            assert receiver.stats["broker_failed"] >= 1 and admin(box, "stats")["injected"]["webhook_retried"] >= 1
            payment = next(c for c in broker.changes if c.entity == "Payment")
            assert (payment.realm_id, payment.entity_id, payment.source) == ("9130000000000001", paid["Id"], "webhook")
            assert paid["Line"][0]["LinkedTxn"][0]["TxnId"] == invoice["Id"] and paid["TotalAmt"] == 150
        finally:
            receiver.stop()


def test_cloudevents_deliveries_duplicates_and_a_wrong_token() -> None:
    broker = Broker()
    receiver = WebhookReceiver(broker.publish, "t.qbo.changes", TOKEN).start()
    config = SandboxConfig(port=0, webhook_url=receiver.url, webhook_interval_s=0.05, webhook_format="cloudevents",
                           webhook_duplicate_rate=1.0)
    with SandboxServer(config) as box:
        try:
            new_customer(client_for(box))
            wait_for(lambda: len(broker.changes) >= 2)
            assert [c.operation for c in broker.changes[:2]] == ["Create", "Create"]  # the same, delivered twice
            assert broker.changes[0].notification_id and broker.changes[0].entity == "Customer"
            admin(box, "config", {"webhook_verifier_token": "not-the-apps-token", "webhook_duplicate_rate": 0})
            new_customer(client_for(box), "Other Corp")
            wait_for(lambda: receiver.stats["refused_signature"] >= 1)
            assert len(broker.changes) == 2  # a forged delivery reaches nothing
        finally:
            receiver.stop()
