"""QBO -> TimeTracker on real services (PostgreSQL with the capture triggers, a real broker, the sandbox): a
payment received in QBO marks the TimeTracker invoice paid, by webhook or by CDC polling, once, with no echo
back to QBO."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from importer.notifications import signature
from producer.outbox_tables import outbox
from producer.timetracker_schema import Invoice, Payment
from schemas.contract import ORIGIN_QBO_IMPORT, qbo_changes_topic
from tests.pipeline import REALM, Pipeline, wait_until
from tests.timetracker_data import base_rows, new_invoice
from ttsync.wiring import build_cdc_poller, build_importer, build_parts, build_webhook, ensure_import_topics

pytestmark = pytest.mark.integration
TOKEN = "integration-verifier-token"


def exported_invoice(pipeline: Pipeline) -> tuple[int, Decimal, str]:
    """A sent TimeTracker invoice, exported to QBO: (its id, its total, its QBO id)."""
    with Session(pipeline.engine) as s:
        user, client, project = base_rows(s)
        inv = new_invoice(s, user, client, project, number="INV-IMP-1", items=2, status="sent")
        s.commit()
        invoice_id, total = inv.id, inv.total_amount
    pipeline.relay()
    pipeline.consume_until(lambda _: len(pipeline.qbo("Invoice")) == 1, timeout_s=60)
    return invoice_id, total, pipeline.qbo("Invoice")[0]["Id"]


@pytest.fixture
def importing(pipeline: Pipeline) -> Iterator[tuple[Pipeline, Any, threading.Thread]]:
    settings = pipeline.settings(sync_direction="both", qbo_webhook_verifier_token=TOKEN, webhook_port=0)
    ensure_import_topics(settings)
    worker = build_importer(settings, build_parts(settings), session_timeout_ms=6000)
    thread = threading.Thread(target=worker.run, kwargs={"max_seconds": 120}, daemon=True)
    thread.start()
    try:
        yield pipeline, worker, thread
    finally:
        worker.stop()
        thread.join(30)
        worker.close()


def tt_invoice(pipeline: Pipeline, invoice_id: int) -> Any:
    with Session(pipeline.engine) as s:
        return s.get_one(Invoice, invoice_id)


def tt_payments(pipeline: Pipeline) -> list[Any]:
    with pipeline.engine.connect() as conn:
        return list(conn.execute(select(Payment.__table__)).all())


def test_a_payment_received_in_qbo_marks_the_invoice_paid_by_webhook_once_and_nothing_echoes(
        importing: tuple[Pipeline, Any, threading.Thread]) -> None:
    pipeline, worker, _ = importing
    invoice_id, total, qbo_invoice = exported_invoice(pipeline)
    receiver = build_webhook(pipeline.settings(qbo_webhook_verifier_token=TOKEN, webhook_port=0)).start()
    try:
        # Intuit delivers at least once, in batches: here every delivery twice.
        pipeline.admin("config", {"webhook_url": receiver.url, "webhook_verifier_token": TOKEN,
                                  "webhook_duplicate_rate": 1.0})
        pipeline.admin(f"realms/{REALM}/receive-payment", {"invoice_id": qbo_invoice, "reference": "QBP-77"})
        wait_until(lambda: tt_invoice(pipeline, invoice_id).status == "paid", 30, "the invoice marked paid")
        wait_until(lambda: worker.stats.duplicates >= 1, 30, "the duplicate delivery seen")
    finally:
        receiver.stop()
        pipeline.admin("config", {"webhook_url": ""})
    inv = tt_invoice(pipeline, invoice_id)
    assert (Decimal(inv.amount_paid), inv.payment_status) == (total, "fully_paid")
    [payment] = tt_payments(pipeline)
    assert (Decimal(payment.amount), payment.reference, payment.status) == (total, "QBP-77", "completed")

    # The importer's TimeTracker changes are captured as the importer's, and the export does not send them back.
    with pipeline.engine.connect() as conn:
        origins = conn.execute(select(outbox.c.aggregatetype, outbox.c.origin)
                               .where(outbox.c.published_at.is_(None))).all()
    assert {t for t, _ in origins} == {"invoice", "payment"}
    assert all(origin == ORIGIN_QBO_IMPORT for _, origin in origins)
    writes_before = sum(pipeline.writes_per_requestid().values())
    pipeline.relay()
    pipeline.consume_until(lambda s: s.skipped >= len(origins), timeout_s=60)
    assert len(pipeline.qbo("Payment")) == 1  # only the one received in QBO
    assert sum(pipeline.writes_per_requestid().values()) == writes_before  # not one write went back


def test_with_webhooks_off_the_cdc_poller_brings_the_payment(
        importing: tuple[Pipeline, Any, threading.Thread]) -> None:
    pipeline, _, _ = importing
    invoice_id, total, qbo_invoice = exported_invoice(pipeline)
    settings = pipeline.settings(sync_direction="import")
    poller, publisher = build_cdc_poller(settings, build_parts(settings))
    try:
        poller.poll_once()  # the first poll sets the cursor; what changes after it is seen
        part = pipeline.admin(f"realms/{REALM}/receive-payment", {"invoice_id": qbo_invoice, "amount": 50})
        assert poller.poll_once() >= 1
        wait_until(lambda: len(tt_payments(pipeline)) == 1, 30, "the payment in TimeTracker")
        inv = tt_invoice(pipeline, invoice_id)
        assert (Decimal(inv.amount_paid), inv.payment_status, inv.status) == (Decimal("50.00"), "partially_paid",
                                                                               "sent")
        # Voided in QBO (a bookkeeper's correction): reversed in TimeTracker, as its own delete route does.
        [received] = pipeline.qbo("Payment")
        assert received["Id"] == part["Payment"]["Id"]
        build_parts(settings).client.void("Payment", received["Id"], received["SyncToken"], "void-in-qbo")
        poller.poll_once()
        wait_until(lambda: tt_payments(pipeline) == [], 30, "the payment reversed")
        inv = tt_invoice(pipeline, invoice_id)
        assert (Decimal(inv.amount_paid), inv.payment_status, inv.status) == (Decimal("0.00"), "unpaid", "sent")
        assert total > Decimal("50")
    finally:
        publisher.close()


def test_a_forged_delivery_is_refused_and_nothing_reaches_kafka(pipeline: Pipeline) -> None:
    settings = pipeline.settings(qbo_webhook_verifier_token=TOKEN, webhook_port=0)
    ensure_import_topics(settings)
    receiver = build_webhook(settings).start()
    body = json.dumps({"eventNotifications": [{"realmId": REALM, "dataChangeEvent": {"entities": [
        {"name": "Payment", "id": "1", "operation": "Create", "lastUpdated": "2026-11-30T10:00:00Z"}]}}]}).encode()
    try:
        forged = requests.post(receiver.url, data=body, headers={"intuit-signature": signature(body, "guess")},
                               timeout=10)
        signed = requests.post(receiver.url, data=body, headers={"intuit-signature": signature(body, TOKEN)},
                               timeout=10)
    finally:
        receiver.stop()
    assert (forged.status_code, signed.status_code) == (401, 200)
    consumer = KafkaConsumer(bootstrap_servers=pipeline.bootstrap)
    try:
        topic = qbo_changes_topic(pipeline.prefix)
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
    finally:
        consumer.close()
    assert sum(ends.values()) == 1  # the signed one only
    with pipeline.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(outbox)).scalar() == 0


def test_the_importer_killed_between_its_writes_applies_every_payment_once(pipeline: Pipeline) -> None:
    """kill -9 after the TimeTracker commit (before the entity map and the offset), then before the offset
    commit: the redelivered changes find their links and apply nothing twice."""
    import subprocess
    import sys

    from producer.outbox_tables import import_links

    with Session(pipeline.engine) as s:
        user, client, project = base_rows(s)
        invoices = [new_invoice(s, user, client, project, number=f"INV-K-{n}", items=1, status="sent")
                    for n in range(4)]
        s.commit()
        invoice_ids = [i.id for i in invoices]
    pipeline.relay()
    pipeline.consume_until(lambda _: len(pipeline.qbo("Invoice")) == 4, timeout_s=60)
    settings = pipeline.settings(sync_direction="import")
    ensure_import_topics(settings)
    poller, publisher = build_cdc_poller(settings, build_parts(settings))
    try:
        poller.poll_once()
        for invoice in pipeline.qbo("Invoice"):
            pipeline.admin(f"realms/{REALM}/receive-payment", {"invoice_id": invoice["Id"]})
        assert poller.poll_once() >= 4
    finally:
        publisher.close()

    def importer(**env: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "ttsync", "import", "--no-create-topics", "--max-seconds",
                               "25"], env=pipeline.env(TTSYNC_SYNC_DIRECTION="import",
                                                       TTSYNC_IMPORT_POLL_INTERVAL_S="0", **env),
                              capture_output=True, timeout=90, check=False)

    first = importer(TTSYNC_TEST_CRASH_AT="after_timetracker_commit", TTSYNC_TEST_CRASH_AFTER="2")
    assert first.returncode == -9, first.stderr[-2000:]
    second = importer(TTSYNC_TEST_CRASH_AT="before_offset_commit", TTSYNC_TEST_CRASH_AFTER="1")
    assert second.returncode == -9, second.stderr[-2000:]
    last = importer()
    assert last.returncode == 0, last.stderr[-2000:]
    payments = tt_payments(pipeline)
    assert sorted(p.invoice_id for p in payments) == sorted(invoice_ids)  # one each: none twice, none lost
    assert all(tt_invoice(pipeline, i).status == "paid" for i in invoice_ids)
    with pipeline.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(import_links)).scalar() == 4
    store = build_parts(settings).store
    assert all((m := store.mapped("payment", str(p.id))) is not None and m.qbo_id for p in payments)  # map caught up


def test_an_import_dead_letter_is_listed_open_then_replayed_and_resolved(
        importing: tuple[Pipeline, Any, threading.Thread]) -> None:
    """A payment in QBO for an invoice ttsync does not know is dead-lettered with its reason; once the invoice is
    known (here: mapped again), `ttsync dlq replay` brings it back, and `ttsync dlq list` shows it resolved (it
    could not tell before: change records had no id, and the importer noted nothing)."""
    import subprocess
    import sys

    def cli(*args: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "ttsync", *args, "--json"], env=pipeline.env(),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return dict(json.loads(done.stdout))

    pipeline, worker, _ = importing
    invoice_id, _, qbo_invoice = exported_invoice(pipeline)
    settings = pipeline.settings(sync_direction="import")
    parts = build_parts(settings)
    held = parts.store.mapped("invoice", str(invoice_id))
    assert held is not None
    parts.store.forget("invoice", str(invoice_id))  # as if ttsync had never synced it
    poller, publisher = build_cdc_poller(settings, parts)
    try:
        poller.poll_once()
        pipeline.admin(f"realms/{REALM}/receive-payment", {"invoice_id": qbo_invoice, "amount": 50})
        poller.poll_once()
        wait_until(lambda: worker.stats.dead_lettered >= 1, 30, "the payment dead-lettered")
        [dead] = cli("dlq", "list")["records"]
        assert (dead["state"], dead["error_code"]) == ("open", "unknown_invoice"), dead
        assert tt_payments(pipeline) == []

        [invoice] = pipeline.qbo("Invoice")
        parts.store.adopt("invoice", str(invoice_id), invoice, version=held.last_version)  # the fix
        assert cli("dlq", "replay")["replayed"] == 1
        wait_until(lambda: len(tt_payments(pipeline)) == 1, 30, "the replayed payment in TimeTracker")
        wait_until(lambda: cli("dlq", "list")["by_state"] == {"open": 0, "replayed": 0, "resolved": 1}, 30,
                   "the dead letter resolved")
    finally:
        publisher.close()
