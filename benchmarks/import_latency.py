"""Import-direction benchmark: a payment received in QBO, until the TimeTracker invoice is marked paid, by webhook
and by CDC polling (p50/p99), and the QBO requests each imported change costs (target: one read).

    python3 -m benchmarks.import_latency [--payments 30] [--poll-interval 1.0] [--json out.json]

Real broker (TTSYNC_KAFKA_BOOTSTRAP_SERVERS, or one started locally), the sandbox in-process with throttling off,
a SQLite TimeTracker database; payments are received one after the other, each timed alone."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from benchmarks._env import kafka_bootstrap, percentile, print_table
from producer import migrate
from producer.database import make_engine
from producer.timetracker_schema import TIMETRACKER_METADATA, Client, Invoice, Project, User
from ttsync.qbo_sandbox.server import SandboxConfig, SandboxServer
from ttsync.settings import Settings
from ttsync.wiring import build_cdc_poller, build_importer, build_parts, build_webhook, ensure_import_topics

REALM = "9130000000000001"


def books(settings: Settings, sandbox: SandboxServer, count: int) -> list[tuple[int, str]]:
    """``count`` sent TimeTracker invoices, each synced to a QBO invoice: (TimeTracker id, QBO id)."""
    engine = make_engine(settings.database_url)
    company = sandbox.state.company(REALM)
    customer = company.save("Customer", {"DisplayName": f"Bench {uuid.uuid4().hex[:6]}"})
    item = company.find("Item", "Name", "Services")
    assert item is not None
    parts = build_parts(settings)
    out: list[tuple[int, str]] = []
    synced: list[dict[str, Any]] = []
    with Session(engine) as s:
        user = User(username=f"bench-{uuid.uuid4().hex[:6]}")
        client = Client(name=f"Bench client {uuid.uuid4().hex[:6]}")
        s.add_all([user, client])
        s.flush()
        project = Project(name="Bench", client_id=client.id)
        s.add(project)
        s.flush()
        for n in range(count):
            inv = Invoice(invoice_number=f"B-{n:05d}", project_id=project.id, client_id=client.id,
                          client_name=client.name, created_by=user.id, status="sent", subtotal=Decimal("100"),
                          issue_date=dt.date(2026, 11, 2), due_date=dt.date(2026, 12, 2),
                          total_amount=Decimal("100"), currency_code="USD")
            s.add(inv)
            s.flush()
            qbo = company.save("Invoice", {"CustomerRef": {"value": customer["Id"]}, "DocNumber": f"B-{n:05d}",
                                           "Line": [{"DetailType": "SalesItemLineDetail", "Amount": 100,
                                                     "SalesItemLineDetail": {"ItemRef": {"value": item["Id"]}}}]})
            out.append((inv.id, str(qbo["Id"])))
            synced.append(qbo)
        s.commit()
    for (tt_id, _), qbo in zip(out, synced, strict=True):  # after the commit: SQLite has one writer at a time
        parts.store.adopt("invoice", str(tt_id), qbo)
    company.take_changes()  # the set-up is not what is measured
    return out


def paid(settings: Settings, invoice_id: int) -> bool:
    with make_engine(settings.database_url).connect() as conn:
        return conn.execute(select(Invoice.status).where(Invoice.id == invoice_id)).scalar() == "paid"


def timed_payments(settings: Settings, sandbox: SandboxServer, invoices: list[tuple[int, str]],
                   timeout_s: float = 30) -> list[float]:
    seconds = []
    for tt_id, qbo_id in invoices:
        started = time.perf_counter()
        requests.post(f"{sandbox.url}/__admin/realms/{REALM}/receive-payment", json={"invoice_id": qbo_id},
                      timeout=10).raise_for_status()
        while not paid(settings, tt_id):
            if time.perf_counter() - started > timeout_s:
                raise RuntimeError(f"invoice {tt_id} not paid within {timeout_s}s")
            time.sleep(0.01)
        seconds.append(time.perf_counter() - started)
    return seconds


def qbo_api_requests(sandbox: SandboxServer) -> int:
    return sum(1 for r in sandbox.state.requests if "/v3/company/" in str(r.get("path", "")))


def run(payments: int, poll_interval: float, workdir: Path) -> dict[str, Any]:
    bootstrap = kafka_bootstrap()
    db = f"sqlite:///{workdir / 'tt.sqlite3'}"
    engine = make_engine(db)
    TIMETRACKER_METADATA.create_all(engine)
    migrate.upgrade(engine)
    sandbox = SandboxServer(SandboxConfig(port=0, throttle_enabled=False, webhook_interval_s=0.05)).start()
    token = requests.post(f"{sandbox.url}/__admin/tokens", json={"realm_id": REALM}, timeout=10).json()
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    settings = Settings(database_url=db, kafka_bootstrap_servers=bootstrap, topic_prefix=prefix,
                        group_id=f"{prefix}-qbo", qbo_base_url=sandbox.url, qbo_token_url=sandbox.token_url,
                        qbo_realm_id=REALM, qbo_refresh_token=token["refresh_token"], secret_key="bench-passphrase-01",
                        sync_direction="both", qbo_webhook_verifier_token=sandbox.config.webhook_verifier_token,
                        webhook_port=0, qbo_requests_per_minute=1_000_000, qbo_burst=10_000)
    ensure_import_topics(settings)
    invoices = books(settings, sandbox, 2 * payments)
    importer = build_importer(settings, build_parts(settings))
    thread = threading.Thread(target=importer.run, kwargs={"max_seconds": 600}, daemon=True)
    thread.start()
    results: dict[str, Any] = {"payments": payments}
    try:
        receiver = build_webhook(settings).start()
        sandbox.state.apply_config({"webhook_url": receiver.url})
        before, changes_before = qbo_api_requests(sandbox), importer.stats.applied + importer.stats.skipped
        webhook = timed_payments(settings, sandbox, invoices[:payments])
        time.sleep(1)  # the invoices' balance notifications, read and skipped
        changes = importer.stats.applied + importer.stats.skipped - changes_before
        reads = qbo_api_requests(sandbox) - before  # QBO's API only: the admin calls that paid are not counted
        sandbox.state.apply_config({"webhook_url": ""})
        receiver.stop()
        results["webhook"] = {"p50_ms": percentile(webhook, 50) * 1000, "p99_ms": percentile(webhook, 99) * 1000}
        results["requests_per_change"] = round(reads / max(changes, 1), 2)
        poller, publisher = build_cdc_poller(settings, build_parts(settings))
        stop = threading.Event()
        threading.Thread(target=poller.run, args=(stop, poll_interval), daemon=True).start()
        try:
            polling = timed_payments(settings, sandbox, invoices[payments:], timeout_s=poll_interval * 5 + 30)
        finally:
            stop.set()
            publisher.close()
        results["polling"] = {"p50_ms": percentile(polling, 50) * 1000, "p99_ms": percentile(polling, 99) * 1000,
                              "interval_s": poll_interval}
    finally:
        importer.stop()
        thread.join(30)
        importer.close()
        sandbox.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payments", type=int, default=30)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args.payments, args.poll_interval, Path(tmp))
    print_table("QBO payment -> TimeTracker invoice paid", [
        ("by webhook p50 / p99", f"{results['webhook']['p50_ms']:.0f} / {results['webhook']['p99_ms']:.0f} ms"),
        (f"by CDC polling every {args.poll_interval:g} s p50 / p99",
         f"{results['polling']['p50_ms']:.0f} / {results['polling']['p99_ms']:.0f} ms"),
        ("QBO requests per imported change", f"{results['requests_per_change']:.2f}"),
    ])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
