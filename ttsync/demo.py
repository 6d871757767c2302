"""``ttsync demo``: the whole pipeline on one machine, on a realistic stretch of TimeTracker activity.

Sets up what is missing (a local Kafka broker; an embedded SQLite TimeTracker database, or PostgreSQL with
``--postgres``), starts the QBO sandbox, the relay and the consumer, plays clients, invoices through their
lifecycle, expenses, payments and a few records that must fail, shows live progress, then fixes the missing
mapping, replays the dead-letter topic and shows where everything ended.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import requests
from kafka import KafkaProducer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from consumer.group_consumer import GroupConsumer, consumer_topics, with_retry_topics
from ops.dlq import DlqFilter, replay
from ops.lag import measure
from producer import migrate
from producer.database import create_database, make_engine
from producer.kafka_publisher import delete_topics
from producer.outbox_relay import OutboxRelay
from producer.outbox_tables import outbox
from producer.session_capture import install_session_capture
from producer.timetracker_schema import (
    TIMETRACKER_METADATA,
    Client,
    Expense,
    Invoice,
    InvoiceItem,
    Payment,
    Project,
    User,
)
from schemas.contract import dlq_topic, qbo_changes_topic, topic_for
from schemas.kafka_client import KafkaConnection
from ttsync.local_services import ensure_kafka, ensure_postgres, run_script
from ttsync.qbo_sandbox.oauth import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
from ttsync.qbo_sandbox.server import SandboxConfig, SandboxServer
from ttsync.settings import Settings
from ttsync.wiring import (
    build_consumer,
    build_importer,
    build_parts,
    build_relay,
    build_webhook,
    ensure_consumer_topics,
    ensure_import_topics,
)

REALM = "9130000000000001"
CLIENT_NAMES = ["Acme Corp", "O'Brien & Sons", "Zeta Analytics", "Café Ünïcode", "Northwind Traders"]


@dataclass
class DemoResult:
    ok: bool = False
    seconds: float = 0.0
    captured: int = 0
    published: int = 0
    applied: int = 0
    skipped: int = 0
    retried: int = 0
    dead_lettered: int = 0
    replayed: int = 0
    qbo: dict[str, int] = field(default_factory=dict)
    dead_letters_left: dict[str, int] = field(default_factory=dict)
    sandbox_url: str = ""
    imported_payment_s: float | None = None  # --direction both: a payment received in QBO -> the invoice paid
    problems: list[str] = field(default_factory=list)


def play_activity(factory: sessionmaker[Session], quick: bool) -> None:
    """What a small consultancy does in TimeTracker in a week."""
    n_invoices = 4 if quick else 10
    with factory() as s:
        user = User(username=f"demo-{uuid.uuid4().hex[:6]}")
        s.add(user)
        s.flush()
        clients = [Client(name=name, email=f"billing@{i}.example", address="1 Main St\nSpringfield",
                          contact_person="Pat Doe") for i, name in enumerate(CLIENT_NAMES)]
        s.add_all(clients)
        s.flush()
        projects = [Project(name=f"Retainer {c.name}", client_id=c.id) for c in clients]
        s.add_all(projects)
        s.commit()
        user_id = user.id
        pairs = [(c.id, c.name, p.id) for c, p in zip(clients, projects, strict=True)]
    invoice_ids = []
    for i in range(n_invoices):  # drafts, with their items, one transaction each
        client_id, name, project_id = pairs[i % len(pairs)]
        with factory() as s:
            inv = Invoice(invoice_number=f"INV-2026-{i + 1:04d}", project_id=project_id, client_id=client_id,
                          client_name=name, issue_date=dt.date(2026, 11, 2), due_date=dt.date(2026, 12, 2),
                          created_by=user_id, currency_code="EUR", tax_rate=Decimal("10"))
            hours = [Decimal("7.50"), Decimal("3.25"), Decimal("1.00")][: 1 + i % 3]
            for h in hours:
                inv.items.append(InvoiceItem(description=f"Consulting, {h} h", quantity=h, unit_price=Decimal("120"),
                                             total_amount=h * Decimal("120")))
            inv.subtotal = sum((it.total_amount for it in inv.items), Decimal("0"))
            inv.tax_amount = (inv.subtotal * Decimal("0.10")).quantize(Decimal("0.01"))
            inv.total_amount = inv.subtotal + inv.tax_amount
            s.add(inv)
            s.commit()
            invoice_ids.append(inv.id)
    for i, inv_id in enumerate(invoice_ids):  # through the lifecycle
        with factory() as s:
            inv = s.get_one(Invoice, inv_id)
            inv.status = "sent"
            s.commit()
            if i % 4 == 3:
                inv.status = "cancelled"
                s.commit()
            elif i % 2 == 0:
                s.add(Payment(invoice_id=inv.id, amount=inv.total_amount, currency="EUR",
                              payment_date=dt.date(2026, 11, 20), method="bank_transfer", status="completed"))
                inv.status = "paid"
                inv.amount_paid = inv.total_amount
                s.commit()
    expenses = [("Train to Acme", "travel", "card", "approved"), ("Client lunch", "meals", "cash", "approved"),
                ("Printer paper", "supplies", "card", "rejected"), ("Projector hire", "equipment rental", "cash",
                                                                      "approved")]
    if not quick:
        expenses += [("Hotel", "travel", "card", "approved"), ("IDE licence", "software", "card", "approved")]
    for title, category, method, status in expenses:
        with factory() as s:
            exp = Expense(user_id=user_id, title=title, category=category, amount=Decimal("84.20"),
                          tax_amount=Decimal("8.42"), currency_code="EUR", expense_date=dt.date(2026, 11, 5),
                          payment_method=method, vendor="Rail Co" if category == "travel" else "Local Shop")
            s.add(exp)
            s.commit()
            exp.status = status
            exp.approved_at = dt.datetime(2026, 11, 6, 9, 0)
            s.commit()


class Demo:
    def __init__(self, *, postgres: bool, quick: bool, keep: bool, console: Console,
                 direction: str = "export") -> None:
        self.direction = direction
        self.postgres = postgres
        self.quick = quick
        self.keep = keep
        self.console = console
        self.result = DemoResult()
        self.cleanups: list[Any] = []
        self.users_broker = False

    def run(self, base: Settings) -> DemoResult:
        started = time.monotonic()
        try:
            self._run(base)
        finally:
            self.result.seconds = round(time.monotonic() - started, 1)
            if not self.keep:
                for cleanup in reversed(self.cleanups):
                    try:
                        cleanup()
                    except Exception as exc:  # noqa: BLE001 - clean up the rest, report this one
                        self.result.problems.append(f"cleanup: {exc!r}")
        return self.result

    def _run(self, base: Settings) -> None:
        """Set up (broker, database, sandbox, pipeline), play TimeTracker activity, fix the cause of the dead
        letters and replay them, then judge what landed in QBO."""
        settings, engine, sandbox, kafka = self._set_up(base)
        relay, worker, parts = self._start_pipeline(settings, engine)

        def captured() -> int:
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(outbox)).scalar_one())

        def done() -> bool:
            s = worker.stats
            return relay.stats.published >= captured() and (
                s.applied + s.skipped + s.duplicates + s.dead_lettered >= relay.stats.published + 1)

        self._play(engine, kafka, settings.topic_prefix)
        self._watch(done, relay, worker, captured, settings, timeout_s=90)
        self._summary("after the first pass", sandbox, worker, relay, captured())

        self.console.print("\n[bold]Fixing the cause[/]: `ttsync map set expense-account \"equipment rental\" "
                           "\"Office Supplies\"`, then `ttsync dlq replay --error missing_account`")
        parts.store.set_override("expense_account", "equipment rental", "Office Supplies")
        before = worker.stats.applied
        replayed = replay(kafka, dlq_topic(settings.topic_prefix), settings.group_id,
                          DlqFilter(error="missing_account"))
        self.result.replayed = replayed.replayed
        self._watch(lambda: worker.stats.applied >= before + replayed.replayed, relay, worker, captured, settings,
                    timeout_s=60)
        self._summary("after the replay", sandbox, worker, relay, captured())
        self._judge(kafka, settings.topic_prefix)
        if self.direction == "both":
            self._import_round_trip(settings, sandbox, engine, parts)

    def _set_up(self, base: Settings) -> tuple[Settings, Engine, SandboxServer, KafkaConnection]:
        say = self.console.print
        kafka, started_kafka = ensure_kafka(base.kafka)
        bootstrap = kafka.bootstrap_servers
        if started_kafka:
            port = bootstrap.rsplit(":", 1)[1]
            self.cleanups.append(lambda: run_script("kafka.sh", "stop", {"KAFKA_PORT": port}))
        say(f"[bold]Kafka[/] {bootstrap}" + (" (started for the demo)" if started_kafka else ""))
        if self.postgres:
            db_url = self._fresh_postgres_database(ensure_postgres())
        else:
            tmp = Path(tempfile.mkdtemp(prefix="ttsync-demo-"))
            db_url = f"sqlite:///{tmp / 'timetracker.sqlite3'}"
        engine = make_engine(db_url)
        self.cleanups.append(engine.dispose)
        TIMETRACKER_METADATA.create_all(engine)
        migrate.upgrade(engine)
        say(f"[bold]TimeTracker database[/] {engine.url.render_as_string(hide_password=True)}")
        sandbox = SandboxServer(SandboxConfig(port=0)).start()
        self.cleanups.append(sandbox.stop)
        self.result.sandbox_url = sandbox.url + "/"
        token = requests.post(f"{sandbox.url}/__admin/tokens", json={"realm_id": REALM}, timeout=10).json()
        say(f"[bold]QBO sandbox[/] {sandbox.url}/ (QBO's limits on: 500 requests/min per company)")
        prefix = f"demo{uuid.uuid4().hex[:6]}"
        secret = base.qbo_client_secret.__class__
        settings = base.model_copy(update={
            "database_url": db_url, "state_database_url": None, "kafka_bootstrap_servers": bootstrap,
            "topic_prefix": prefix, "group_id": f"{prefix}-qbo", "qbo_base_url": sandbox.url,
            "qbo_token_url": sandbox.token_url, "qbo_realm_id": REALM, "qbo_client_id": SANDBOX_CLIENT_ID,
            "qbo_client_secret": secret(SANDBOX_CLIENT_SECRET), "qbo_refresh_token": secret(token["refresh_token"]),
            "secret_key": secret(uuid.uuid4().hex), "retry_topic_delays_s": [2, 5], "relay_poll_interval_s": 0.2,
        })
        demo_topics = [*consumer_topics(prefix, settings.retry_topic_delays_s), dlq_topic(prefix)]
        if self.direction == "both":  # deleted with the rest, once every client of the demo is closed
            demo_topics += with_retry_topics([qbo_changes_topic(prefix)], settings.retry_topic_delays_s)
        ensure_consumer_topics(settings)
        self.users_broker = not started_kafka
        if self.users_broker:  # a broker of the user's: leave it as the demo found it
            self.cleanups.append(lambda: delete_topics(kafka, demo_topics))
        return settings, engine, sandbox, kafka

    def _start_pipeline(self, settings: Settings, engine: Engine) -> tuple[OutboxRelay, GroupConsumer, Any]:
        relay = build_relay(settings, engine)
        parts = build_parts(settings)
        worker = build_consumer(settings, parts)
        threads = [threading.Thread(target=relay.run, daemon=True), threading.Thread(target=worker.run, daemon=True)]
        for t in threads:
            t.start()

        def stop_pipeline() -> None:
            relay.stop()
            worker.stop()
            for t in threads:
                t.join(30)
            worker.close()
            relay.publisher.close()

        self.cleanups.append(stop_pipeline)
        return relay, worker, parts

    def _play(self, engine: Engine, kafka: KafkaConnection, prefix: str) -> None:
        factory = sessionmaker(engine)
        install_session_capture(factory, source="demo-timetracker")
        self.console.print("Playing TimeTracker activity: clients, invoices draft -> sent -> paid/cancelled, "
                           "payments, expenses (one with a category QBO has no account for), and one malformed "
                           "record ...")
        play_activity(factory, self.quick)
        producer = KafkaProducer(**kafka.client_config())
        producer.send(topic_for("invoice", prefix), key=b"9999", value=b'{"event_type": "invoice.updated", '
                      b'"schema_version": "1.0", "payload": "half a record').get(10)
        producer.close()

    def _judge(self, kafka: KafkaConnection, prefix: str) -> None:
        left = [d for d in self._dead_letters(kafka, prefix) if d.replay_count == 0
                and d.error_code != "missing_account"]
        self.result.dead_letters_left = {}
        for d in left:
            self.result.dead_letters_left[d.error_code] = self.result.dead_letters_left.get(d.error_code, 0) + 1
        expected_left = {"malformed_event": 1}
        approved_expenses = 3 if self.quick else 5  # the rejected one was never approved, so never in QBO
        self.result.ok = not self.result.problems and self.result.dead_letters_left == expected_left \
            and self.result.qbo.get("Purchase", 0) == approved_expenses
        if not self.result.ok:
            self.result.problems.append(f"unexpected end: {self.result.qbo}, left {self.result.dead_letters_left}")

    def _import_round_trip(self, base: Settings, sandbox: SandboxServer, engine: Engine, parts: Any) -> None:
        """The other direction: a customer pays an invoice in QBO; Intuit's webhook (the sandbox's) reaches
        `ttsync webhook`, `ttsync import` records the payment in TimeTracker and marks the invoice paid."""
        say = self.console.print
        settings = base.model_copy(update={"sync_direction": "both", "webhook_port": 0,
                                           "qbo_webhook_verifier_token": base.qbo_client_secret.__class__(
                                               sandbox.config.webhook_verifier_token)})
        mapped = {k.split(":", 1)[1]: m for k, m in parts.store.all_mapped().items() if k.startswith("invoice:")}
        with engine.connect() as conn:
            open_ids = [str(i) for i in conn.execute(select(Invoice.id).where(Invoice.status == "sent")).scalars()]
        target = next((i for i in open_ids if i in mapped and mapped[i].qbo_id), None)
        if target is None:
            self.result.problems.append("no sent invoice in QBO to pay")
            return
        ensure_import_topics(settings)
        receiver = build_webhook(settings).start()
        self.cleanups.append(receiver.stop)
        importer = build_importer(settings, parts)
        thread = threading.Thread(target=importer.run, kwargs={"max_seconds": 60}, daemon=True)
        thread.start()

        def stop_importer() -> None:
            importer.stop()
            thread.join(30)
            importer.close()

        self.cleanups.append(stop_importer)
        sandbox.state.apply_config({"webhook_url": receiver.url})
        say(f"\n[bold]The other direction[/]: a customer pays invoice {target} in QBO (QuickBooks Payments) ...")
        started = time.monotonic()
        paid = {"invoice_id": mapped[target].qbo_id, "reference": "QBP-DEMO"}
        requests.post(f"{sandbox.url}/__admin/realms/{REALM}/receive-payment", json=paid, timeout=10).raise_for_status()
        deadline = started + 30
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                status = conn.execute(select(Invoice.status).where(Invoice.id == int(target))).scalar()
            if status == "paid":
                self.result.imported_payment_s = round(time.monotonic() - started, 2)
                say(f"TimeTracker invoice {target} is [green]paid[/] {self.result.imported_payment_s} s later "
                    "(webhook -> Kafka -> ttsync import), with its payment row")
                return
            time.sleep(0.2)
        self.result.problems.append("the payment received in QBO did not reach TimeTracker within 30 s")
        self.result.ok = False

    def _fresh_postgres_database(self, server_url: str) -> str:
        """A database of the demo's own on the local cluster, dropped afterwards (unless --keep)."""
        url, drop = create_database(server_url, "ttsync_demo_")
        self.cleanups.append(drop)
        return url

    @staticmethod
    def _dead_letters(kafka: KafkaConnection, prefix: str) -> list[Any]:
        from ops.dlq import scan

        return [d for _, d in scan(kafka, dlq_topic(prefix))]

    def _watch(self, done: Any, relay: OutboxRelay, worker: Any, captured: Any, settings: Settings,
               timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s

        def table() -> Table:
            s = worker.stats
            t = Table(title="pipeline")
            for col in ("captured", "published", "applied", "skipped", "retried", "dead-lettered", "lag"):
                t.add_column(col, justify="right")
            try:
                lag = sum(p.lag or 0 for p in measure(settings.kafka, settings.group_id).partitions)
            except Exception:  # noqa: BLE001 - the group may not have committed yet
                lag = 0
            t.add_row(str(captured()), str(relay.stats.published), str(s.applied), str(s.skipped),
                      str(s.forwarded_to_retry + s.retried_in_place), str(s.dead_lettered), str(lag))
            return t

        with Live(table(), console=self.console, refresh_per_second=4, transient=False) as live:
            while time.monotonic() < deadline and not done():
                time.sleep(0.5)
                live.update(table())
            live.update(table())
        if not done():
            self.result.problems.append(f"pipeline did not settle within {timeout_s}s")
        s = worker.stats
        self.result.captured, self.result.published = captured(), relay.stats.published
        self.result.applied, self.result.skipped = s.applied, s.skipped
        self.result.retried, self.result.dead_lettered = s.forwarded_to_retry + s.retried_in_place, s.dead_lettered

    def _summary(self, title: str, sandbox: SandboxServer, worker: Any, relay: OutboxRelay, captured: int) -> None:
        data = requests.get(f"{sandbox.url}/__admin/realms/{REALM}/entities", timeout=10).json()
        counts = {k: len(v) for k, v in data.items() if k != "deleted" and k not in ("Account", "Item")}
        voided = sum(1 for i in data["Invoice"] if i.get("Voided"))
        deleted = sum(len(v) for v in data["deleted"].values())
        self.result.qbo = counts
        t = Table(title=f"QuickBooks Online {title}")
        t.add_column("entity")
        t.add_column("count", justify="right")
        for k, v in sorted(counts.items()):
            t.add_row(k, str(v) + (f" ({voided} voided)" if k == "Invoice" and voided else ""))
        t.add_row("deleted in QBO", str(deleted))
        t.add_row("dead-lettered so far", str(worker.stats.dead_lettered))
        self.console.print(t)
