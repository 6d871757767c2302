"""Both directions at once, under faults. QBO side: payments received in QBO, announced by webhooks (some twice,
newest first) and by CDC. TimeTracker side, at the same time: new invoices sent and client e-mails edited. The
webhook receiver, the importer and the export consumer are killed with SIGKILL again and again.

The invariant, both ways: every QBO payment is exactly one TimeTracker payment row of its amount and every
invoice's ``amount_paid`` is the sum of its rows; every TimeTracker invoice sent is one QBO invoice and every
client's e-mail is its customer's; nothing a side received goes back to where it came from (the QBO payments are
exactly the ones received there). Then a quiet spell with everything running: no QBO write and no TimeTracker
change at all, so nothing ping-pongs."""

from __future__ import annotations

import os
import random
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from producer.outbox_tables import outbox
from producer.timetracker_schema import Client, Invoice, Payment, Project, User
from tests.chaos.harness import Proc, brokers_of, storage_of
from tests.chaos.invariant import Verdict
from tests.chaos.report import record
from tests.pipeline import REALM, Pipeline, wait_until
from tests.services import free_port
from tests.timetracker_data import base_rows, new_invoice
from ttsync.wiring import ensure_import_topics

pytestmark = [pytest.mark.chaos, pytest.mark.integration]
TOKEN = "chaos-verifier-token"
PAID_IN_QBO = 8  # invoices paid in QBO, each in two parts
SENT_IN_TIMETRACKER = 12  # invoices sent in TimeTracker meanwhile
EMAIL_EDITS = 10  # client e-mails edited in TimeTracker meanwhile


class TimeTrackerSide(threading.Thread):
    """TimeTracker's users while the payments come in: invoices sent, client e-mails edited, one change per
    transaction."""

    def __init__(self, pipeline: Pipeline, user_id: int, clients: list[tuple[int, int]], seed: int) -> None:
        super().__init__(daemon=True)
        self.pipeline, self.user_id, self.clients = pipeline, user_id, clients
        self.rng = random.Random(seed)
        self.numbers: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            changes = ["invoice"] * SENT_IN_TIMETRACKER + ["email"] * EMAIL_EDITS
            self.rng.shuffle(changes)
            for n, kind in enumerate(changes):
                # Invoices for the first client only: its customer was made by an invoice in USD; the others by
                # their own export, in the company's currency, which a USD invoice may not use (Fault 6000).
                client_id, project_id = self.rng.choice(self.clients) if kind == "email" else self.clients[0]
                with Session(self.pipeline.engine) as s:
                    client = s.get_one(Client, client_id)
                    if kind == "email":
                        client.email = f"ap{n}@client{client_id}.test"
                    else:
                        number = f"INV-T-{n}"
                        inv = new_invoice(s, s.get_one(User, self.user_id), client, s.get_one(Project, project_id),
                                          number=number, items=1 + n % 3, status="sent")
                        inv.client_email = client.email
                        self.numbers.append(number)
                    s.commit()
                time.sleep(self.rng.uniform(0.1, 0.5))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def test_both_directions_while_receiver_importer_and_export_consumer_are_killed(pipeline: Pipeline,
                                                                               tmp_path: Path) -> None:
    started, rng = time.monotonic(), random.Random(17)
    with Session(pipeline.engine) as s:
        user, client, project = base_rows(s)
        others = [base_rows(s)[1:] for _ in range(2)]
        made = [new_invoice(s, user, client, project, number=f"INV-C-{n}", items=1, status="sent")
                for n in range(PAID_IN_QBO)]
        s.commit()
        invoice_ids = [inv.id for inv in made]
        user_id = user.id
        clients = [(client.id, project.id)] + [(c.id, p.id) for c, p in others]
    pipeline.create_topics()
    ensure_import_topics(pipeline.settings())
    port = free_port()
    env = pipeline.env(TTSYNC_SYNC_DIRECTION="both", TTSYNC_QBO_WEBHOOK_VERIFIER_TOKEN=TOKEN,
                       TTSYNC_WEBHOOK_PORT=str(port), TTSYNC_IMPORT_POLL_INTERVAL_S="2")
    relay = Proc("relay", ["relay", "--no-create-topics"], env, tmp_path / "relay.log").start()
    exporter = Proc("consume", ["consume", "--no-create-topics"], env, tmp_path / "consume.log").start()
    wait_until(lambda: len(pipeline.qbo("Invoice")) == PAID_IN_QBO, 90, "the invoices to be paid, in QBO")
    receiver = Proc("webhook", ["webhook", "--no-create-topics"], env, tmp_path / "webhook.log").start()
    importer = Proc("import", ["import", "--no-create-topics"], env, tmp_path / "import.log").start()
    procs = [relay, exporter, receiver, importer]
    pipeline.admin("config", {"webhook_url": f"http://127.0.0.1:{port}/", "webhook_verifier_token": TOKEN,
                              "webhook_duplicate_rate": 0.3, "webhook_reverse_order": True})
    timetracker = TimeTrackerSide(pipeline, user_id, clients, seed=23)
    timetracker.start()
    received_ids: set[str] = set()
    try:
        for invoice in pipeline.qbo("Invoice"):
            balance = Decimal(str(invoice["Balance"]))
            first = (balance * Decimal("0.4")).quantize(Decimal("0.01"))
            for amount in (first, balance - first):  # paid in two parts
                made_in_qbo = pipeline.admin(f"realms/{REALM}/receive-payment", {"invoice_id": invoice["Id"],
                                                                                "amount": float(amount)})
                received_ids.add(str(made_in_qbo["Payment"]["Id"]))
                time.sleep(rng.uniform(0.05, 0.4))
                victim = rng.choice([receiver, importer, exporter, None])
                if victim is not None:
                    victim.kill9()
                    time.sleep(rng.uniform(0.1, 0.6))
                    victim.start()
        timetracker.join(120)
        assert timetracker.error is None, timetracker.error
        paid = lambda: all(inv.status == "paid" for inv in invoices(pipeline, invoice_ids))  # noqa: E731
        wait_until(paid, 120, "every invoice paid in TimeTracker")
        exported = lambda: set(timetracker.numbers) <= {i["DocNumber"] for i in pipeline.qbo("Invoice")}  # noqa: E731
        wait_until(exported, 120, "every invoice sent in TimeTracker in QBO")
        wait_until(lambda: not emails_differ(pipeline), 120, "every client's e-mail in QBO")
        wait_until(lambda: unpublished(pipeline) == 0, 60, "the outbox relayed")

        # A quiet spell with every process running: nothing may move on either side any more.
        writes, changes = sum(pipeline.writes_per_requestid().values()), outbox_rows(pipeline)
        time.sleep(float(os.environ.get("TTSYNC_CHAOS_QUIET_S", "60")))
        quiet_writes = sum(pipeline.writes_per_requestid().values()) - writes
        quiet_changes = outbox_rows(pipeline) - changes
    finally:
        pipeline.admin("config", {"webhook_url": ""})
        for proc in procs:
            proc.stop()
    verdict = judge(pipeline, invoice_ids, received_ids, timetracker.numbers)
    verdict.duplicated += quiet_writes + quiet_changes
    if quiet_writes or quiet_changes:
        verdict.problems.append(f"in the quiet spell: {quiet_writes} QBO writes, {quiet_changes} TimeTracker changes")
    kills = receiver.kills + importer.kills + exporter.kills
    record("both directions: receiver, importer, export consumer kill -9", verdict, time.monotonic() - started,
           f"{kills} kills; {len(received_ids)} paid in QBO, {len(timetracker.numbers)} sent + {EMAIL_EDITS} "
           "e-mails in TimeTracker; quiet after", sum(getattr(p, "restarts", 0) for p in procs),
           storage=storage_of(pipeline.db_url), brokers=brokers_of(pipeline.bootstrap))
    logs = "\n".join(f"--- {p.name}\n{p.tail()}" for p in procs)
    assert verdict.ok and not verdict.problems, (verdict, logs)
    assert kills >= 3, f"only {kills} kills: the scenario proved little"


def judge(pipeline: Pipeline, paid_ids: list[int], received_ids: set[str], sent_numbers: list[str]) -> Verdict:
    rows = tt_payments(pipeline)
    in_qbo = pipeline.qbo("Payment")
    verdict = Verdict(changes=len(received_ids) + len(sent_numbers) + EMAIL_EDITS,
                      aggregates=len(paid_ids) + len(sent_numbers))
    # QBO -> TimeTracker: one row per payment received in QBO, and no QBO payment but those (no echo back).
    verdict.duplicated += max(0, len(rows) - len(received_ids))
    verdict.lost += max(0, len(received_ids) - len(rows))
    extra = {str(p["Id"]) for p in in_qbo} - received_ids
    if extra:
        verdict.duplicated += len(extra)
        verdict.problems.append(f"QBO payments nobody received there (an echo): {sorted(extra)}")
    by_invoice: dict[int, list[Decimal]] = {}
    for row in rows:
        by_invoice.setdefault(row.invoice_id, []).append(Decimal(row.amount))
    for inv in invoices(pipeline, paid_ids):
        if Decimal(inv.amount_paid) != sum(by_invoice.get(inv.id, []), Decimal("0")) or \
                inv.amount_paid != inv.total_amount:
            verdict.problems.append(f"invoice {inv.id}: amount_paid {inv.amount_paid}, rows {by_invoice.get(inv.id)}")
        else:
            verdict.applied += 1
    # TimeTracker -> QBO: each invoice sent is one QBO invoice of its total; the e-mails agree.
    numbers = [i["DocNumber"] for i in pipeline.qbo("Invoice")]
    with Session(pipeline.engine) as s:
        totals = {inv.invoice_number: inv.total_amount for inv in
                  s.scalars(select(Invoice).where(Invoice.invoice_number.in_(sent_numbers)))}
    by_number = {i["DocNumber"]: i for i in pipeline.qbo("Invoice")}
    for number in sent_numbers:
        count = numbers.count(number)
        if count == 0:
            verdict.lost += 1
            verdict.problems.append(f"{number}: not in QBO")
        elif count > 1:
            verdict.duplicated += count - 1
        elif Decimal(str(by_number[number]["TotalAmt"])) != totals[number]:
            verdict.problems.append(f"{number}: QBO total {by_number[number]['TotalAmt']} != {totals[number]}")
        else:
            verdict.applied += 1
    if differ := emails_differ(pipeline):
        verdict.lost += len(differ)
        verdict.problems.append(f"e-mails differ: {differ}")
    return verdict


def emails_differ(pipeline: Pipeline) -> list[str]:
    customers = pipeline.qbo("Customer")
    with Session(pipeline.engine) as s:
        clients = list(s.scalars(select(Client)))
    differ = []
    for c in clients:
        mine = [q for q in customers if f"ttsync:client:{c.id}@" in (q.get("Notes") or "")]
        held = [(q.get("PrimaryEmailAddr") or {}).get("Address") for q in mine]
        if held != [c.email]:
            differ.append(f"client {c.id} {c.email}: QBO holds {held}")
    return differ


def outbox_rows(pipeline: Pipeline) -> int:
    with pipeline.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(outbox)).scalar_one())


def unpublished(pipeline: Pipeline) -> int:
    with pipeline.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None)))
                   .scalar_one())


def invoices(pipeline: Pipeline, ids: list[int]) -> list[Invoice]:
    with Session(pipeline.engine) as s:
        return [s.get_one(Invoice, i) for i in ids]


def tt_payments(pipeline: Pipeline) -> list[Payment]:
    with pipeline.engine.connect() as conn:
        return list(conn.execute(select(Payment.__table__)).all())  # type: ignore[arg-type]
