"""`capture snapshot` on SQLite (no concurrency needed) and reconcile's judging, which is pure."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from consumer.lifecycle import Mapped, SyncPolicy
from ops.drift import judge
from producer.outbox_snapshot import SnapshotConflict, parse_types, run_snapshot
from producer.outbox_tables import outbox
from tests.timetracker_data import base_rows, new_expense, new_invoice, new_payment


def _seed(engine: Engine) -> None:
    with Session(engine) as s:
        user, client, project = base_rows(s)
        for n in range(5):
            inv = new_invoice(s, user, client, project, number=f"S-{n}", status="sent")
            s.flush()
            if n == 0:
                new_payment(s, inv)
        for _ in range(3):
            new_expense(s, user, status="approved")
        s.commit()


def _snapshot_rows(engine: Engine) -> list[tuple[str, str, int, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(outbox.c.aggregatetype, outbox.c.aggregateid,
                                                      outbox.c.aggregate_version, outbox.c.type)
                                               .order_by(outbox.c.seq))]


def test_a_snapshot_enqueues_each_record_once_parents_first(sqlite_engine: Engine) -> None:
    _seed(sqlite_engine)
    dry = run_snapshot(sqlite_engine, dry_run=True)
    assert dry.total == 1 + 5 + 3 + 1 and _snapshot_rows(sqlite_engine) == []
    report = run_snapshot(sqlite_engine, source="tt-test")
    rows = _snapshot_rows(sqlite_engine)
    assert report.enqueued == len(rows) == 10 and not report.resumed
    assert [r[0] for r in rows] == ["client"] + ["invoice"] * 5 + ["expense"] * 3 + ["payment"]
    assert {r[3] for r in rows} == {"client.snapshot", "invoice.snapshot", "expense.snapshot", "payment.snapshot"}
    with sqlite_engine.connect() as conn:
        payload = conn.execute(select(outbox.c.payload).where(outbox.c.aggregatetype == "invoice")).scalars().first()
    assert len(payload["payload"]["items"]) == 2 and payload["source"] == "tt-test"
    again = run_snapshot(sqlite_engine)  # a second run: every record once more, at a newer version
    assert again.enqueued == 10 and not again.resumed
    assert {r[2] for r in _snapshot_rows(sqlite_engine)[10:]} == {2}


def test_a_stopped_snapshot_resumes_where_it_stopped(sqlite_engine: Engine) -> None:
    _seed(sqlite_engine)
    calls = {"n": 0}

    def stop_after_first_chunk() -> bool:
        calls["n"] += 1
        return calls["n"] > 2  # client chunk, first invoice chunk, then stop

    first = run_snapshot(sqlite_engine, chunk_size=2, should_stop=stop_after_first_chunk)
    assert 0 < first.enqueued < 10 and not all(t.finished for t in first.types)
    with pytest.raises(SnapshotConflict, match="unfinished"):
        run_snapshot(sqlite_engine, types=["invoice"])
    rest = run_snapshot(sqlite_engine, chunk_size=2)
    assert rest.resumed and rest.run_id == first.run_id and rest.enqueued == 10
    keys = [(r[0], r[1]) for r in _snapshot_rows(sqlite_engine)]
    assert len(keys) == len(set(keys)) == 10


def test_since_and_types_narrow_the_snapshot(sqlite_engine: Engine) -> None:
    _seed(sqlite_engine)
    with sqlite_engine.begin() as conn:
        conn.execute(text("UPDATE invoices SET updated_at = '2020-01-01 00:00:00', created_at = '2020-01-01 00:00:00'"
                          " WHERE invoice_number IN ('S-0', 'S-1')"))
    report = run_snapshot(sqlite_engine, types=parse_types("invoice"), since=dt.datetime(2024, 1, 1))
    assert report.enqueued == 3
    with pytest.raises(ValueError, match="unknown record type"):
        parse_types("invoice,timesheet")


# -- reconcile's judgement -----------------------------------------------------------------------------

POLICY = SyncPolicy()


def _invoice(status: str, items: tuple[str, ...] = ("10.00", "20.00"), number: str = "INV-1", client: int = 1,
             **extra: Any) -> dict[str, Any]:
    total = str(sum(Decimal(a) for a in items))
    return {"id": 1, "status": status, "invoice_number": number, "client_id": client, "client_name": "Acme",
            "issue_date": "2026-11-02", "due_date": "2026-12-02", "subtotal": total, "total_amount": total,
            "amount_paid": "0", "items": [{"id": n, "invoice_id": 1, "description": "w", "quantity": "1",
                                           "unit_price": a, "total_amount": a} for n, a in enumerate(items)],
            **extra}


def _qbo_invoice(qid: str, note: str, amounts: tuple[float, ...] = (10.0, 20.0), number: str = "INV-1",
                 customer: str = "7", **extra: Any) -> dict[str, Any]:
    return {"Id": qid, "PrivateNote": note, "DocNumber": number, "CustomerRef": {"value": customer},
            "Line": [{"Amount": a, "DetailType": "SalesItemLineDetail"} for a in amounts],
            "TotalAmt": sum(amounts), "Balance": sum(amounts), **extra}


def test_reconcile_tells_missing_different_extra_and_duplicate_apart() -> None:
    mark = "ttsync:invoice:{}@tt"
    records = {
        "invoice:1": _invoice("sent"),  # fine
        "invoice:2": _invoice("sent", number="INV-2"),  # missing
        "invoice:3": _invoice("sent", number="INV-3"),  # a line differs
        "invoice:4": _invoice("draft", number="INV-4"),  # must not be in QBO, is
        "invoice:5": _invoice("sent", number="INV-5"),  # twice in QBO
        "invoice:6": _invoice("cancelled", number="INV-6"),  # voided: fine
        "invoice:8": _invoice("sent", number="INV-8", integration_metadata={"quickbooks": {"invoice_id": "80"}}),
        "client:1": {"id": 1, "status": "active", "email": "a@x.com", "name": "Acme"},
    }
    qbo = {"Invoice": [
        _qbo_invoice("10", mark.format(1)),
        _qbo_invoice("30", mark.format(3), amounts=(10.0, 25.0), number="INV-3"),
        _qbo_invoice("40", mark.format(4), number="INV-4"),
        _qbo_invoice("50", mark.format(5), number="INV-5"), _qbo_invoice("51", mark.format(5), number="INV-5"),
        _qbo_invoice("60", "Voided - " + mark.format(6), number="INV-6", Voided=True),
        _qbo_invoice("70", mark.format(7), number="INV-7"),  # TimeTracker deleted invoice 7
        _qbo_invoice("80", "", number="INV-8"),  # the old connector's, id stored: belongs to invoice 8
        _qbo_invoice("90", "ttsync:invoice:9@another-instance"),  # not ours to judge
    ], "Customer": [{"Id": "7", "Notes": "ttsync:client:1@tt", "PrimaryEmailAddr": {"Address": "b@x.com"},
                     "DisplayName": "Acme"}]}
    mapped = {"client:1": Mapped("Customer", "7", "0", 1)}
    drift = judge(records, qbo, mapped, POLICY, "tt", still_in_timetracker=lambda _t, _ids: set())
    found = {(d.kind, d.aggregate_type, d.aggregate_id): d for d in drift}
    assert set(found) == {("missing", "invoice", "2"), ("different", "invoice", "3"), ("extra", "invoice", "4"),
                          ("duplicate", "invoice", "5"), ("extra", "invoice", "7"), ("different", "client", "1")}
    assert "lines ['10.00', '25.00']" in found[("different", "invoice", "3")].detail
    assert found[("duplicate", "invoice", "5")].qbo_ids == ["50", "51"]
    assert "e-mail 'b@x.com'" in found[("different", "client", "1")].detail


def test_reconcile_reads_a_record_outside_since_as_kept_not_gone() -> None:
    qbo = {"Invoice": [_qbo_invoice("70", "ttsync:invoice:7@tt")]}
    drift = judge({}, qbo, {}, POLICY, "tt", still_in_timetracker=lambda _t, ids: set(ids))
    assert drift == []


def test_reconcile_sees_a_wrong_customer_and_a_live_invoice_that_must_be_voided() -> None:
    records = {"invoice:1": _invoice("sent", client=2), "invoice:2": _invoice("cancelled", number="INV-2")}
    qbo = {"Invoice": [_qbo_invoice("10", "ttsync:invoice:1@tt", customer="7"),
                       _qbo_invoice("20", "ttsync:invoice:2@tt", number="INV-2")]}
    drift = judge(records, qbo, {"client:2": Mapped("Customer", "8", "0", 1)}, POLICY, "tt")
    details = {d.aggregate_id: d.detail for d in drift}
    assert "customer 7" in details["1"] and "must be voided" in details["2"]


def test_outbox_purge_keeps_unpublished_rows_unless_debezium_relays(sqlite_engine: Engine) -> None:
    from sqlalchemy import update

    from producer.outbox_status import PurgeRefused, purge

    _seed(sqlite_engine)
    run_snapshot(sqlite_engine)  # ten rows, none published
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=100)
    with sqlite_engine.begin() as conn:
        conn.execute(update(outbox).values(occurred_at=old))
        conn.execute(update(outbox).where(outbox.c.aggregatetype == "invoice").values(published_at=old))
    assert purge(sqlite_engine, dt.timedelta(hours=72)) == 5  # the published invoices only
    assert len(_snapshot_rows(sqlite_engine)) == 5
    with pytest.raises(PurgeRefused, match="replication slot"):  # no slot can vouch for them on SQLite
        purge(sqlite_engine, dt.timedelta(hours=72), slot="ttsync_outbox")
    for age in (0, -1):
        with pytest.raises(PurgeRefused, match="positive age"):
            purge(sqlite_engine, dt.timedelta(hours=age))
    assert len(_snapshot_rows(sqlite_engine)) == 5


def test_reconcile_compares_totals_balances_accounts_and_decoded_names() -> None:
    paid = _invoice("paid", items=("240.00",), extra_goods=[{"id": 1, "invoice_id": 1, "name": "g", "quantity": "3",
                                                            "unit_price": "15.50", "total_amount": "46.50"}],
                    amount_paid="286.50")
    paid["subtotal"] = paid["total_amount"] = "286.50"
    records = {
        "invoice:1": paid,
        "invoice:2": {**_invoice("overdue", number="INV-2"), "id": 2},  # a draft the daily job made overdue
        "expense:5": {"id": 5, "status": "approved", "amount": "10.00", "tax_amount": "0"},
        "client:1": {"id": 1, "status": "active", "email": None, "name": "O'Brien &amp; Sons"},
        "client:2": {"id": 2, "status": "active", "email": None, "name": "Müller &amp; Söhne"},
    }
    qbo = {
        # the extra good is missing in QBO, and nobody recorded that it was paid
        "Invoice": [_qbo_invoice("10", "ttsync:invoice:1@tt", amounts=(240.0,))],
        "Purchase": [{"Id": "50", "PrivateNote": "ttsync:expense:5@tt", "TotalAmt": 10, "PaymentType": "Cash",
                      "AccountRef": {"value": "1"},
                      "Line": [{"Amount": 10, "AccountBasedExpenseLineDetail": {"AccountRef": {"value": "2"}}}]}],
        "Customer": [{"Id": "7", "Notes": "ttsync:client:1@tt", "DisplayName": "O'Brien & Sons"},
                     {"Id": "8", "Notes": "ttsync:client:2@tt", "DisplayName": "Müller &amp; Söhne"}],
        "Account": [{"Id": "1", "Name": "Checking", "AccountType": "Bank"},
                    {"Id": "2", "Name": "Services", "AccountType": "Income"}],
    }
    drift = {(d.aggregate_type, d.aggregate_id): d.detail for d in judge(records, qbo, {}, POLICY, "tt")}
    assert set(drift) == {("invoice", "1"), ("expense", "5"), ("client", "2")}
    assert "total 240.00, TimeTracker has 286.50" in drift[("invoice", "1")]
    assert "balance 240.00, TimeTracker has 0.00" in drift[("invoice", "1")]
    assert "'Services', a Income account" in drift[("expense", "5")]
    assert "name 'Müller &amp; Söhne', TimeTracker has 'Müller & Söhne'" in drift[("client", "2")]


def test_a_fix_against_an_empty_timetracker_or_beyond_the_cap_is_refused() -> None:
    from ops.drift import removal_refusal, removals

    qbo = {"Invoice": [_qbo_invoice(str(n), f"ttsync:invoice:{n}@tt", number=f"INV-{n}") for n in range(1, 6)],
           "Customer": [{"Id": "70", "Notes": "ttsync:client:9@tt", "DisplayName": "Gone Ltd"}]}
    # A wrong database: every marked entity looks like an extra.
    drift = judge({}, qbo, {}, POLICY, "tt", still_in_timetracker=lambda _t, _ids: set())
    plan = removals(drift, lambda d: d.qbo_ids[0])
    assert {(r.entity, r.how) for r in plan} == {("Invoice", "void"), ("Customer", "deactivate")}  # never deleted
    assert "reads as empty" in (removal_refusal(plan, {"invoice": 0, "client": 0}, max_removals=100) or "")
    assert "--max-deletes 3" in (removal_refusal(plan, {"invoice": 7}, max_removals=3) or "")
    assert removal_refusal(plan, {"invoice": 7}, max_removals=10) is None


def test_decide_and_reconcile_read_the_sync_policy_alike() -> None:
    """One reading of the status policy (lifecycle.placement): what reconcile expects in QBO is what the consumer
    does with an event of that status, whether the record is in QBO yet or not."""
    import datetime as dt
    import uuid

    from consumer.lifecycle import Action, Mapped, SyncPolicy, decide
    from ops.drift import expected
    from schemas.events import EventEnvelope

    policy = SyncPolicy()
    statuses = ["draft", "sent", "issued", "paid", "overdue", "cancelled", "void", "pending", "approved",
                "rejected", "reimbursed", "completed", "refunded", "failed", "active", "inactive", ""]
    for agg in ("invoice", "expense", "payment", "client"):
        for status in statuses:
            payload = {"id": 1, "status": status}
            event = EventEnvelope(event_id=uuid.uuid4(), event_type=f"{agg}.updated", aggregate_type=agg,
                                  aggregate_id="1", aggregate_version=2, occurred_at=dt.datetime.now(dt.UTC),
                                  payload=payload)
            want = expected(agg, payload, policy)
            new = decide(event, Mapped("X", None, None, 1), policy).action  # v1 settled, never in QBO
            there = decide(event, Mapped("X", "7", "0", 1), policy).action
            if want == "present":
                assert (new, there) == (Action.CREATE, Action.UPDATE), (agg, status)
            elif want == "voided":
                assert (new, there) == (Action.SKIP, Action.VOID), (agg, status)
            elif want == "absent":
                assert new is Action.SKIP and there in (Action.SKIP, Action.DELETE), (agg, status)
            else:
                assert new in (Action.SKIP, Action.CREATE), (agg, status)
