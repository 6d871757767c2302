"""The import direction under faults: payments received in QBO, announced by webhooks (some twice, newest first)
and by CDC, while the webhook receiver and the importer are killed with SIGKILL again and again. The invariant,
for this direction: every QBO payment is exactly one TimeTracker payment row of its amount, every invoice's
``amount_paid`` is the sum of its rows, and the export consumer sends nothing back (not one QBO write)."""

from __future__ import annotations

import random
import time
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from producer.timetracker_schema import Invoice, Payment
from tests.chaos.harness import Proc
from tests.chaos.invariant import Verdict
from tests.chaos.report import record
from tests.pipeline import REALM, Pipeline, wait_until
from tests.services import free_port
from tests.timetracker_data import base_rows, new_invoice
from ttsync.wiring import ensure_import_topics

pytestmark = [pytest.mark.chaos, pytest.mark.integration]
TOKEN = "chaos-verifier-token"


def test_payments_from_qbo_arrive_once_while_receiver_and_importer_are_killed(pipeline: Pipeline,
                                                                             tmp_path: Path) -> None:
    started, rng = time.monotonic(), random.Random(17)
    with Session(pipeline.engine) as s:
        user, client, project = base_rows(s)
        made = [new_invoice(s, user, client, project, number=f"INV-C-{n}", items=1, status="sent") for n in range(8)]
        s.commit()
        invoice_ids = [inv.id for inv in made]
    pipeline.relay()
    pipeline.consume_until(lambda _: len(pipeline.qbo("Invoice")) == 8, timeout_s=90)
    ensure_import_topics(pipeline.settings())
    port = free_port()
    env = pipeline.env(TTSYNC_SYNC_DIRECTION="both", TTSYNC_QBO_WEBHOOK_VERIFIER_TOKEN=TOKEN,
                       TTSYNC_WEBHOOK_PORT=str(port), TTSYNC_IMPORT_POLL_INTERVAL_S="2")
    receiver = Proc("webhook", ["webhook", "--no-create-topics"], env, tmp_path / "webhook.log").start()
    importer = Proc("import", ["import", "--no-create-topics"], env, tmp_path / "import.log").start()
    pipeline.admin("config", {"webhook_url": f"http://127.0.0.1:{port}/", "webhook_verifier_token": TOKEN,
                              "webhook_duplicate_rate": 0.3, "webhook_reverse_order": True})
    writes_before = sum(pipeline.writes_per_requestid().values())
    try:
        for invoice in pipeline.qbo("Invoice"):
            balance = Decimal(str(invoice["Balance"]))
            first = (balance * Decimal("0.4")).quantize(Decimal("0.01"))
            for amount in (first, balance - first):  # paid in two parts
                pipeline.admin(f"realms/{REALM}/receive-payment", {"invoice_id": invoice["Id"],
                                                                  "amount": float(amount)})
                time.sleep(rng.uniform(0.05, 0.4))
                victim = rng.choice([receiver, importer, None])
                if victim is not None:
                    victim.kill9()
                    time.sleep(rng.uniform(0.1, 0.6))
                    victim.start()
        paid = lambda: all(inv.status == "paid" for inv in invoices(pipeline, invoice_ids))  # noqa: E731
        wait_until(paid, 120, "every invoice paid in TimeTracker")
    finally:
        pipeline.admin("config", {"webhook_url": ""})
        receiver.stop()
        importer.stop()
    rows = tt_payments(pipeline)
    received = pipeline.qbo("Payment")
    verdict = Verdict(changes=len(received), aggregates=len(invoice_ids))
    by_invoice: dict[int, list[Decimal]] = {}
    for row in rows:
        by_invoice.setdefault(row.invoice_id, []).append(Decimal(row.amount))
    verdict.duplicated = max(0, len(rows) - len(received))
    verdict.lost = max(0, len(received) - len(rows))
    for inv in invoices(pipeline, invoice_ids):
        if Decimal(inv.amount_paid) != sum(by_invoice.get(inv.id, []), Decimal("0")) or inv.amount_paid != \
                inv.total_amount:
            verdict.problems.append(f"invoice {inv.id}: amount_paid {inv.amount_paid}, rows {by_invoice.get(inv.id)}")
        else:
            verdict.applied += 1
    # The importer's TimeTracker changes, relayed to the export consumer: recorded, never sent back.
    pipeline.relay()
    pipeline.consume_until(lambda s: s.skipped >= len(rows), timeout_s=90)
    echoes = sum(pipeline.writes_per_requestid().values()) - writes_before
    verdict.duplicated += max(0, echoes)
    record("import: webhook receiver and importer kill -9", verdict, time.monotonic() - started,
           f"{receiver.kills + importer.kills} kills; duplicated deliveries, newest first; CDC every 2 s")
    assert verdict.ok and not verdict.problems, (verdict, importer.tail(), receiver.tail())
    assert len(received) == 16 and echoes == 0


def invoices(pipeline: Pipeline, ids: list[int]) -> list[Invoice]:
    with Session(pipeline.engine) as s:
        return [s.get_one(Invoice, i) for i in ids]


def tt_payments(pipeline: Pipeline) -> list[Payment]:
    with pipeline.engine.connect() as conn:
        return list(conn.execute(select(Payment.__table__)).all())  # type: ignore[arg-type]
