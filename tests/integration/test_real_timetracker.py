"""The books on TimeTracker 5.10.0's real schema (built by its own migrations), changed the way the real app
changes it, through the capture triggers, the relay, a real broker and the consumer into the sandbox: QBO must
equal TimeTracker to the cent, every expense on an expense-type account, and ``ttsync reconcile`` exit 0."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, text

from producer import migrate
from producer.database import make_engine, scratch_database
from tests.pipeline import Pipeline, pipeline_on
from tests.timetracker_fixture import RealApp, load_schema

pytestmark = pytest.mark.integration

CATEGORIES = ("travel", "meals", "accommodation", "supplies", "software", "equipment", "services", "marketing",
              "training", "other")
METHODS = ("cash", "credit_card", "debit_card", "bank_transfer", "company_card", "paypal", "other")
EXPENSE_TYPES = {"Expense", "Other Expense", "Cost of Goods Sold"}


@pytest.fixture
def real_db(pg_server_url: str) -> Iterator[tuple[Engine, str]]:
    with scratch_database(pg_server_url, "tt510_") as url:
        engine = make_engine(url)
        load_schema(engine)
        migrate.upgrade(engine)
        yield engine, url
        engine.dispose()


def money(v: Any) -> Decimal:
    return Decimal(str(v if v is not None else 0)).quantize(Decimal("0.01"))


def drain(pipe: Pipeline, engine: Engine) -> None:
    """Relay everything, then consume until every event is settled."""
    pipe.relay()
    with engine.connect() as conn:
        events = conn.execute(text("SELECT count(*) FROM ttsync_outbox")).scalar_one()
    pipe.consume_until(lambda s: s.applied + s.skipped + s.duplicates + s.dead_lettered >= events, timeout_s=120)


def test_the_books_agree_with_the_real_timetracker(real_db: tuple[Engine, str], kafka_bootstrap: str,
                                                   topic_prefix: str, group_id: str) -> None:
    engine, url = real_db
    with pipeline_on(engine, url, kafka_bootstrap, topic_prefix, group_id) as pipe:
        app = RealApp(engine)
        obrien = app.client("O'Brien & Sons \"Ltd\"", email="ap@obrien.test")  # via the web form: &amp;
        muller = app.client("Müller & Söhne GmbH")
        api = app.client("Plain & API Client", via_form=False)

        # 2 h x 120 + 3 x 15.50 extra good = 286.50 (seen on the real app)
        goods = app.invoice("INV-1", obrien, [("Consulting", "2", "120.00")])
        app.add_extra_good(goods, "Cable & plug", "3", "15.50")
        app.set_status(goods, "sent")
        # 500 of items + a linked 55.00 expense (50 + 5 tax) = 555.00, then marked paid from the status menu
        linked = app.invoice("INV-2", muller, [("Design", "1", "500.00")])
        app.link_expense(linked, app.expense("Hotel &amp; breakfast", "accommodation", "company_card", "50.00",
                                             "5.00"))
        app.set_status(linked, "sent")
        app.mark_paid(linked)
        # A draft nobody sent, made overdue by the daily job: stays out of QBO.
        forgotten = app.invoice("INV-3", api, [("Draft work", "1", "80.00")], due=dt.date(2026, 11, 10))
        # Sent, paid by a payment row, refunded: back to sent with the full balance open.
        refunded = app.invoice("INV-4", api, [("Support", "4", "25.00")], status="sent", tax_rate="19")
        pay = app.record_payment(refunded, "119.00")
        app.refund(pay)
        # Part-paid by a payment row.
        partial = app.invoice("INV-5", obrien, [("Audit", "3", "99.99")], status="sent", tax_rate="7")
        app.record_payment(partial, "100.00")
        # Sent with only extra goods, no item lines.
        only_goods = app.invoice("INV-6", muller, [], status="draft")
        app.add_extra_good(only_goods, "Licence", "2", "49.50")
        app.set_status(only_goods, "sent")
        assert app.overdue_job(dt.date(2026, 11, 15)) == 1  # INV-3 only: the others are due 2026-12-02
        # Every category, every payment method.
        for n, category in enumerate(CATEGORIES):
            app.expense(f"{category} & co", category, METHODS[n % len(METHODS)], "100.00", "19.00",
                        vendor="Kaffee & Kuchen" if n % 2 else None)
        for method in METHODS:
            app.expense(f"paid by {method}", "other", method, "10.00")

        drain(pipe, engine)

        with engine.connect() as conn:
            tt = {r.invoice_number: r for r in conn.execute(text("SELECT * FROM invoices"))}
        assert tt["INV-1"].total_amount == Decimal("286.50") and tt["INV-2"].total_amount == Decimal("555.00")
        assert tt["INV-3"].status == app.invoice_row(forgotten)["status"] == "overdue"
        assert tt["INV-2"].status == "paid"
        assert tt["INV-4"].status == "sent" and tt["INV-4"].amount_paid == 0
        qbo_invoices = {i["DocNumber"]: i for i in pipe.qbo("Invoice")}
        assert sorted(qbo_invoices) == ["INV-1", "INV-2", "INV-4", "INV-5", "INV-6"]
        for number, inv in qbo_invoices.items():
            row = tt[number]
            assert money(inv["TotalAmt"]) == money(row.total_amount), number
            assert money(inv["Balance"]) == money(row.total_amount) - money(row.amount_paid), number
            assert inv["CurrencyRef"]["value"] == row.currency_code == "EUR"

        customers = {c["Id"]: c for c in pipe.qbo("Customer")}
        assert sorted(c["DisplayName"] for c in customers.values()) == \
            ["Müller & Söhne GmbH", "O'Brien & Sons \"Ltd\"", "Plain & API Client"]
        assert {c["CurrencyRef"]["value"] for c in customers.values()} == {"EUR"}

        accounts = {a["Id"]: a for a in pipe.qbo("Account")}
        purchases = pipe.qbo("Purchase")
        assert len(purchases) == len(CATEGORIES) + len(METHODS) + 1  # the linked hotel is approved too
        for p in purchases:
            assert accounts[p["AccountRef"]["value"]]["AccountType"] == \
                ("Credit Card" if p["PaymentType"] == "CreditCard" else "Bank")
            for line in p["Line"]:
                booked = accounts[line["AccountBasedExpenseLineDetail"]["AccountRef"]["value"]]
                assert booked["AccountType"] in EXPENSE_TYPES, (p["DocNumber"], booked["Name"])
        assert {v["DisplayName"] for v in pipe.qbo("Vendor")} == {"Kaffee & Kuchen"}

        report = subprocess.run([sys.executable, "-m", "ttsync", "reconcile", "--json"], env=pipe.env(),
                                capture_output=True, text=True, timeout=180)
        assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
        assert json.loads(report.stdout)["drift"] == []

        # Preflight: every category and method resolves; a mapping to the Income account "Services" is refused.
        check = ttsync(pipe, "map", "check", "--json")
        assert check.returncode == 0, check.stdout[-2000:]
        rows = json.loads(check.stdout)["mappings"]
        assert {r["key"] for r in rows if r["kind"].startswith("expense-account")} >= set(CATEGORIES)
        assert {r["key"] for r in rows if r["kind"].startswith("paying-account")} >= set(METHODS)
        refused = ttsync(pipe, "map", "set", "expense-account", "services", "Services", "--json")
        assert refused.returncode == 1 and "Income" in json.loads(refused.stdout)["error"]
        assert ttsync(pipe, "map", "set", "expense-account", "services", "Nowhere").returncode == 1
        wrong = ttsync(pipe, "map", "check", "--json", TTSYNC_EXPENSE_ACCOUNT_MAP='{"training": "Services"}')
        assert wrong.returncode == 1
        assert [r["key"] for r in json.loads(wrong.stdout)["mappings"] if r["problem"]] == ["training"]


def ttsync(pipe: Pipeline, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ttsync", *args], env=pipe.env(**env), capture_output=True,
                          text=True, timeout=120)



def test_a_timetracker_upgrade_that_renames_columns_never_fails_its_writes(real_db: tuple[Engine, str],
                                                                            kafka_bootstrap: str, topic_prefix: str,
                                                                            group_id: str) -> None:
    engine, url = real_db
    with pipeline_on(engine, url, kafka_bootstrap, topic_prefix, group_id) as pipe:
        app = RealApp(engine)
        expense = app.expense("Taxi", "travel", "cash", "20.00", vendor="Cab Co")
        with engine.begin() as conn:  # what an upgrade's migration might do
            conn.execute(text("ALTER TABLE expenses RENAME COLUMN vendor TO supplier"))
            conn.execute(text("ALTER TABLE clients DROP COLUMN phone"))
        # TimeTracker's own writes still commit, triggers and all.
        with engine.begin() as conn:
            conn.execute(text("UPDATE expenses SET supplier = 'Cab &amp; Co', amount = 25 WHERE id = :e"),
                         {"e": expense})
        client = app.client("After the upgrade")
        with engine.connect() as conn:
            payload = conn.execute(text("SELECT payload FROM ttsync_outbox WHERE aggregatetype = 'expense' "
                                        "ORDER BY seq DESC LIMIT 1")).scalar_one()
        assert payload["payload"]["_missing_columns"] == ["expenses.vendor"]

        check = subprocess.run([sys.executable, "-m", "ttsync", "capture", "check", "--json"], env=pipe.env(),
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 1 and json.loads(check.stdout)["missing"] == ["clients.phone", "expenses.vendor"]

        drain(pipe, engine)
        from ops import dlq as dlq_tools
        from schemas.contract import dlq_topic

        dead = {(d.event_type, d.key): d for _, d in dlq_tools.scan(kafka_bootstrap, dlq_topic(topic_prefix),
                                                                      timeout_s=5)}
        # Captured before the upgrade: synced. After it: dead-lettered, the column named, nothing lost.
        assert set(dead) == {("expense.updated", str(expense)), ("client.created", str(client))}
        for d in dead.values():
            assert d.error_code == "timetracker_column_missing"
        assert "expenses.vendor" in dead[("expense.updated", str(expense))].summary()["message"]
        assert "clients.phone" in dead[("client.created", str(client))].summary()["message"]
        assert [p["DocNumber"] for p in pipe.qbo("Purchase")] == [f"TT-EXP-{expense}"]
