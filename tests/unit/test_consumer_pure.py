"""The pure parts of the consumer: lifecycle decisions, request mapping, retry policy, dead-letter headers."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.dead_letter import base_topic, due_at, forward, retry_tier
from consumer.errors import (
    DependencyNotReady,
    MalformedEvent,
    MappingError,
    MissingMapping,
    QboThrottled,
    QboUnavailable,
    QboValidationFault,
    ReconnectNeeded,
    StaleSyncToken,
    StateUnavailable,
)
from consumer.lifecycle import Action, Mapped, SyncPolicy, decide
from consumer.mapping import (
    InvoiceRefs,
    MappingOptions,
    PaymentRefs,
    PurchaseRefs,
    customer_request,
    invoice_request,
    payment_request,
    purchase_request,
    request_id,
)
from consumer.rate_limit import LocalTokenBucket, bucket_parameters
from consumer.retry_policy import RetryPolicy, StepKind
from schemas.backoff import compute_backoff
from schemas.events import ClientState, EventEnvelope, ExpenseState, InvoiceState, PaymentState


def event(agg: str, action: str, version: int, **payload: Any) -> EventEnvelope:
    return EventEnvelope(event_id=uuid.uuid4(), event_type=f"{agg}.{action}", aggregate_type=agg,  # type: ignore[arg-type]
                         aggregate_id="1", aggregate_version=version, occurred_at=dt.datetime.now(dt.UTC),
                         payload={"id": 1, **payload})


def mapped(version: int, status: str = "active", qbo_id: str | None = "10") -> Mapped:
    return Mapped("Invoice", qbo_id, "0", version, status)


POLICY = SyncPolicy()


@pytest.mark.parametrize(
    ("agg", "action", "status", "state", "expected"),
    [
        ("invoice", "created", "draft", None, Action.SKIP),
        ("invoice", "updated", "sent", None, Action.CREATE),
        ("invoice", "updated", "issued", None, Action.CREATE),
        ("invoice", "updated", "paid", mapped(1), Action.UPDATE),
        ("invoice", "updated", "overdue", mapped(1), Action.UPDATE),
        ("invoice", "updated", "cancelled", mapped(1), Action.VOID),
        ("invoice", "updated", "cancelled", None, Action.SKIP),
        ("invoice", "updated", "cancelled", mapped(1, "voided"), Action.SKIP),
        ("invoice", "updated", "paid", mapped(1, "voided"), Action.SKIP),
        ("invoice", "deleted", "draft", mapped(1), Action.DELETE),
        ("invoice", "deleted", "draft", None, Action.SKIP),
        ("invoice", "updated", "sent", mapped(1, qbo_id=None), Action.CREATE),
        ("expense", "created", "pending", None, Action.SKIP),
        ("expense", "updated", "approved", None, Action.CREATE),
        ("expense", "updated", "reimbursed", mapped(1), Action.UPDATE),
        ("expense", "updated", "rejected", mapped(1), Action.DELETE),
        ("expense", "updated", "rejected", None, Action.SKIP),
        ("payment", "created", "completed", None, Action.CREATE),
        ("payment", "created", "pending", None, Action.SKIP),
        ("payment", "updated", "refunded", mapped(1), Action.VOID),
        ("payment", "updated", "failed", None, Action.SKIP),
        ("client", "created", "active", None, Action.CREATE),
        ("client", "updated", "active", mapped(1), Action.UPDATE),
        ("client", "updated", "inactive", mapped(1), Action.DEACTIVATE),
        ("client", "updated", "inactive", None, Action.SKIP),
        ("client", "deleted", "active", mapped(1), Action.DEACTIVATE),
        ("invoice", "snapshot", "sent", None, Action.CREATE),
    ],
)
def test_lifecycle(agg: str, action: str, status: str, state: Mapped | None, expected: Action) -> None:
    assert decide(event(agg, action, 2, status=status), state, POLICY).action is expected


def test_older_or_same_version_is_skipped() -> None:
    assert decide(event("invoice", "updated", 3, status="sent"), mapped(3), POLICY).action is Action.SKIP
    assert decide(event("invoice", "updated", 2, status="sent"), mapped(5), POLICY).action is Action.SKIP


def test_a_version_implausibly_far_ahead_is_dead_lettered_not_believed() -> None:
    """A forged record with version 2**62 once became the entity map's version: every later real change of the
    aggregate then looked older and was skipped for good."""
    with pytest.raises(MalformedEvent) as forged:
        decide(event("invoice", "updated", 2**62, status="sent"), mapped(3), POLICY)
    assert forged.value.code == "implausible_version" and not forged.value.retryable
    with pytest.raises(MalformedEvent):
        decide(event("invoice", "created", 2**62, status="sent"), None, POLICY)  # nothing known yet
    near = SyncPolicy(max_version_jump=10)
    assert decide(event("invoice", "updated", 13, status="sent"), mapped(3), near).action is Action.UPDATE
    with pytest.raises(MalformedEvent):
        decide(event("invoice", "updated", 14, status="sent"), mapped(3), near)
    unlimited = SyncPolicy(max_version_jump=0)
    assert decide(event("invoice", "updated", 2**62, status="sent"), mapped(3), unlimited).action is Action.UPDATE


def test_an_unissued_overdue_invoice_waits_while_an_earlier_version_is_unsettled() -> None:
    """Chaos, QBO 5xx: invoice 178 v1 (created as sent) failed and went to a retry topic; v2 (overdue, from the
    daily job) overtook it, was skipped as never issued and recorded, and v1 was then skipped as older: a sent
    invoice that never reached QBO. Whether it was ever issued is history: with a version missing, it waits."""
    with pytest.raises(DependencyNotReady) as waiting:
        decide(event("invoice", "updated", 2, status="overdue"), None, POLICY)
    assert waiting.value.code == "earlier_version_pending" and "version 1" in waiting.value.message
    with pytest.raises(DependencyNotReady):
        decide(event("invoice", "updated", 4, status="overdue"), mapped(2, qbo_id=None), POLICY)
    # the whole history seen (every version settled, applied or skipped): judged as before
    assert decide(event("invoice", "created", 1, status="overdue"), None, POLICY).action is Action.SKIP
    assert decide(event("invoice", "updated", 3, status="overdue"), mapped(2, qbo_id=None), POLICY).action \
        is Action.SKIP
    assert decide(event("invoice", "updated", 5, status="overdue"), mapped(2), POLICY).action is Action.UPDATE
    assert decide(event("invoice", "updated", 3, status="overdue", emails_sent=1), None, POLICY).action \
        is Action.CREATE


def test_policy_is_configurable() -> None:
    policy = SyncPolicy(invoice_sync=frozenset({"draft", "sent"}))
    assert decide(event("invoice", "created", 1, status="draft"), None, policy).action is Action.CREATE


def invoice(**over: Any) -> InvoiceState:
    data: dict[str, Any] = dict(
        id=7, invoice_number="INV-0007", project_id=1, client_id=3, client_name="Acme", client_email="ap@acme.test",
        issue_date="2026-11-02", due_date="2026-12-02", status="sent", tax_amount="15.10", currency_code="eur",
        notes="thanks", items=[{"id": 1, "invoice_id": 7, "description": "Work", "quantity": "2.00",
                                "unit_price": "75.50", "total_amount": "151.00"}])
    data.update(over)
    # As TimeTracker's calculate_totals() leaves them: items + extra goods + linked expenses, then tax.
    lines = [Decimal(i["total_amount"]) for i in data["items"]] + \
        [Decimal(g["total_amount"]) for g in data.get("extra_goods", [])] + \
        [Decimal(e["amount"]) + Decimal(e.get("tax_amount") or "0") for e in data.get("expenses", [])]
    data.setdefault("subtotal", str(sum(lines, Decimal("0"))))
    data.setdefault("total_amount", str(Decimal(data["subtotal"]) + Decimal(data["tax_amount"])))
    return InvoiceState.model_validate(data)


def test_invoice_request() -> None:
    body = invoice_request(invoice(), InvoiceRefs("42", "5"), MappingOptions(source="acme"))
    assert body["CustomerRef"] == {"value": "42"} and body["DocNumber"] == "INV-0007"
    assert body["TxnDate"] == "2026-11-02" and body["DueDate"] == "2026-12-02"
    line = body["Line"][0]
    assert line["Amount"] == 151 and line["SalesItemLineDetail"] == {"ItemRef": {"value": "5"}, "Qty": 2,
                                                                     "UnitPrice": 75.5}
    assert body["TxnTaxDetail"] == {"TotalTax": 15.1}
    assert body["CurrencyRef"] == {"value": "EUR"}
    assert body["PrivateNote"] == "ttsync:invoice:7@acme thanks"
    assert body["BillEmail"] == {"Address": "ap@acme.test"}
    assert "CurrencyRef" not in invoice_request(invoice(), InvoiceRefs("42", "5"), MappingOptions(multicurrency=False))


def test_invoice_line_whose_numbers_disagree_sends_amount_only() -> None:
    inv = invoice(items=[{"id": 1, "invoice_id": 7, "description": "Odd", "quantity": "3.00", "unit_price": "0.33",
                          "total_amount": "1.00"}])
    line = invoice_request(inv, InvoiceRefs("1", "2"), MappingOptions())["Line"][0]
    assert line["Amount"] == 1 and "Qty" not in line["SalesItemLineDetail"]


def test_invoice_mapping_errors() -> None:
    with pytest.raises(MappingError, match="21-character"):
        invoice_request(invoice(invoice_number="X" * 22), InvoiceRefs("1", "2"), MappingOptions())
    with pytest.raises(MappingError, match="no lines") as empty:
        invoice_request(invoice(items=[], tax_amount="0"), InvoiceRefs("1", "2"), MappingOptions())
    assert empty.value.code == "invoice_without_lines"


def test_hostile_strings_are_kept_and_bounded() -> None:
    inv = invoice(notes="x" * 10_000, items=[{"id": 1, "invoice_id": 7, "description": "O'Brien \"quoted\" ünï",
                                              "quantity": "1", "unit_price": "1", "total_amount": "1"}])
    body = invoice_request(inv, InvoiceRefs("1", "2"), MappingOptions())
    assert len(body["PrivateNote"]) == 4000 and body["Line"][0]["Description"] == "O'Brien \"quoted\" ünï"


def expense(**over: Any) -> ExpenseState:
    data: dict[str, Any] = dict(id=9, user_id=1, title="Train", category="travel", amount="42.10", tax_amount="4.21",
                                currency_code="USD", status="approved", expense_date="2026-11-03",
                                payment_method="card", vendor="Rail Co", receipt_number="R-1")
    data.update(over)
    return ExpenseState.model_validate(data)


def test_purchase_request() -> None:
    body = purchase_request(expense(), PurchaseRefs("35", "13", "77"), MappingOptions())
    assert body["PaymentType"] == "CreditCard" and body["AccountRef"] == {"value": "35"}
    assert body["TotalAmt"] == 46.31 and sum(line["Amount"] for line in body["Line"]) == pytest.approx(46.31)
    assert body["Line"][0]["AccountBasedExpenseLineDetail"]["AccountRef"] == {"value": "13"}
    assert body["EntityRef"] == {"value": "77", "type": "Vendor"}
    assert body["DocNumber"] == "TT-EXP-9" and body["TxnDate"] == "2026-11-03"
    cash = purchase_request(expense(payment_method="cash", tax_amount="0", vendor=None), PurchaseRefs("1", "2"),
                            MappingOptions())
    assert cash["PaymentType"] == "Cash" and len(cash["Line"]) == 1 and "EntityRef" not in cash
    assert purchase_request(expense(payment_method="barter"), PurchaseRefs("1", "2"),
                            MappingOptions())["PaymentType"] == "Cash"


def test_payment_and_customer_requests() -> None:
    pay = PaymentState.model_validate(dict(id=4, invoice_id=7, amount="50.00", payment_date="2026-11-10",
                                           reference="WIRE-123456789012345678901", status="completed"))
    body = payment_request(pay, PaymentRefs("42", "88"), MappingOptions())
    assert body["TotalAmt"] == 50 and body["Line"][0]["LinkedTxn"] == [{"TxnId": "88", "TxnType": "Invoice"}]
    assert len(body["PaymentRefNum"]) == 21
    client = ClientState.model_validate(dict(id=3, name="O'Brien & Sons", email="a@b.c", contact_person="Pat Doe",
                                             address="1 Main St\n\nSpringfield", phone="555", status="inactive"))
    cust = customer_request(client, MappingOptions())
    assert cust["DisplayName"] == "O'Brien & Sons" and cust["Active"] is False
    assert cust["BillAddr"] == {"Line1": "1 Main St", "Line2": "Springfield"}
    assert cust["GivenName"] == "Pat" and cust["FamilyName"] == "Doe"


def test_request_id_is_stable_and_changes_with_the_body() -> None:
    eid = uuid.uuid4()
    a = request_id(eid, "create", {"x": 1})
    assert a == request_id(eid, "create", {"x": 1}) and len(a) <= 36
    assert a != request_id(eid, "create", {"x": 2}) and a != request_id(eid, "update", {"x": 1})


def test_retry_policy() -> None:
    policy = RetryPolicy(inplace_attempts=2, topic_delays_s=(10, 60))
    assert policy.next_step(ReconnectNeeded("x"), 1, None).kind is StepKind.STOP
    for permanent in (MissingMapping("m"), QboValidationFault("v", code="6000")):
        assert policy.next_step(permanent, 1, None).kind is StepKind.DEAD_LETTER
    err = QboUnavailable("503")
    assert policy.next_step(err, 1, None).kind is StepKind.RETRY_IN_PLACE
    assert policy.next_step(err, 2, None).kind is StepKind.RETRY_IN_PLACE
    step = policy.next_step(err, 3, None)
    assert step.kind is StepKind.RETRY_TOPIC and step.tier == 0 and step.delay_s == 10
    assert policy.next_step(err, 3, 0).tier == 1
    # Through every tier: a record-tied retryable error is dead-lettered; a 5xx, a 429, the token endpoint or an
    # unclassified exception is not about the record and keeps waiting in the last tier instead.
    assert policy.next_step(StaleSyncToken("5010"), 3, 1).kind is StepKind.DEAD_LETTER
    for not_the_record in (err, QboThrottled("429", retry_after_s=1), KeyError("bug"), ValueError("html")):
        last = policy.next_step(not_the_record, 9, 1)
        assert last.kind is StepKind.RETRY_TOPIC and last.tier == 1, not_the_record
    paused = policy.next_step(err, 1, None, outage=True)
    assert paused.kind is StepKind.RETRY_IN_PLACE and paused.reason.startswith("paused")
    assert policy.next_step(err, 40, 1, outage=True).delay_s <= 30 * 1.2  # probes, capped
    assert policy.next_step(MissingMapping("m"), 1, None, outage=True).kind is StepKind.DEAD_LETTER
    waiting = policy.next_step(DependencyNotReady("d"), 1, 1, failing_for_s=600)
    assert waiting.kind is StepKind.RETRY_TOPIC and waiting.tier == 1 and waiting.delay_s == 60  # keeps waiting
    assert policy.next_step(DependencyNotReady("d"), 1, 1, failing_for_s=6 * 3600 + 1).kind is StepKind.DEAD_LETTER
    assert RetryPolicy(topic_delays_s=(10,), dependency_wait_max_s=0).next_step(
        DependencyNotReady("d"), 1, 0).kind is StepKind.DEAD_LETTER
    first = policy.next_step(DependencyNotReady("payment before its invoice"), 1, None)
    assert first.kind is StepKind.RETRY_TOPIC and first.tier == 0  # no in-place wait: it would block the invoice
    throttled = policy.next_step(QboThrottled("429", retry_after_s=7), 4, None)
    assert throttled.kind is StepKind.RETRY_IN_PLACE and throttled.delay_s == 7


def test_a_dependency_waits_about_a_fifth_as_long_again_as_it_has_waited() -> None:
    """Climbing a tier per attempt, a payment waited 5 minutes for an invoice written 70 s after it (the backfill
    benchmark's tail): the wait follows how long it has waited so far. Half as long again put a backfill's payments
    that had waited two minutes into the 60 s tier just before their invoices came (a 45 s idle tail): a fifth keeps
    them in the 10 s tier for their first five minutes."""
    policy = RetryPolicy(topic_delays_s=(10, 60, 300))
    waits = [policy.next_step(DependencyNotReady("d"), 1, tier, failing_for_s=since)
             for tier, since in ((None, 0), (0, 10), (0, 70), (0, 130), (0, 299), (0, 300), (1, 700), (1, 1500))]
    assert [(w.kind, w.tier, w.delay_s) for w in waits] == [
        (StepKind.RETRY_TOPIC, 0, 10), (StepKind.RETRY_TOPIC, 0, 10), (StepKind.RETRY_TOPIC, 0, 10),
        (StepKind.RETRY_TOPIC, 0, 10), (StepKind.RETRY_TOPIC, 0, 10), (StepKind.RETRY_TOPIC, 1, 60),
        (StepKind.RETRY_TOPIC, 1, 60), (StepKind.RETRY_TOPIC, 2, 300)]


def test_a_state_database_outage_waits_in_place_and_is_never_dead_lettered() -> None:
    from sqlalchemy.exc import OperationalError

    from consumer.state_db import translated

    policy = RetryPolicy(inplace_attempts=2, topic_delays_s=(10,), backoff_max_s=3.0)
    with pytest.raises(StateUnavailable) as caught, translated():
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    down = caught.value
    assert isinstance(down.__cause__, OperationalError)
    for attempt, tier in ((1, None), (50, None), (500, 0)):
        step = policy.next_step(down, attempt, tier)
        assert step.kind is StepKind.RETRY_IN_PLACE and step.delay_s <= 3.0 * 1.2
    # anything else stays what it is (a bug is not mistaken for an outage)
    with pytest.raises(KeyError), translated():
        raise KeyError("x")


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    delays = [compute_backoff(n, 0.5, 4.0) for n in range(1, 8)]
    assert 0.4 <= delays[0] <= 0.6 and all(d <= 4.8 for d in delays) and delays[3] > delays[0]


def test_forwarded_record_headers() -> None:
    rec = SimpleNamespace(topic="tt.invoice", partition=2, offset=41, timestamp=1700000000000, key=b"7",
                          value=b"{}", headers=[("id", b"e-1"), ("eventType", b"invoice.updated")])
    fault = QboValidationFault("QBO Fault 6240", code="6240", body='{"Fault": {}}')
    now = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
    out = forward(rec, target_topic="tt.invoice.retry.10s", error=fault, group_id="g", attempts_here=3,
                  due_at=now + dt.timedelta(seconds=10), now=now)
    headers = {k: v.decode() for k, v in out.headers}
    assert out.key == b"7" and out.value == b"{}" and headers["id"] == "e-1"
    assert headers["ttsync.errors.original.topic"] == "tt.invoice"
    assert headers["ttsync.errors.original.offset"] == "41" and headers["ttsync.errors.attempts"] == "3"
    assert headers["ttsync.errors.qbo.fault.code"] == "6240"
    assert due_at(SimpleNamespace(headers=out.headers)) == now + dt.timedelta(seconds=10)
    # through a second tier: the original stays, attempts add up
    again = SimpleNamespace(topic="tt.invoice.retry.10s", partition=0, offset=3, timestamp=1, key=b"7", value=b"{}",
                            headers=out.headers)
    out2 = forward(again, target_topic="tt.dlq", error=QboUnavailable("503"), group_id="g", attempts_here=1)
    headers2 = {k: v.decode() for k, v in out2.headers}
    assert headers2["ttsync.errors.original.topic"] == "tt.invoice" and headers2["ttsync.errors.attempts"] == "4"
    assert "ttsync.errors.qbo.fault.code" not in headers2 and "ttsync.errors.retry.due.at" not in headers2
    assert retry_tier("tt.invoice.retry.60s", (10, 60)) == 1 and retry_tier("tt.invoice", (10,)) is None
    assert base_topic("tt.invoice.retry.60s") == "tt.invoice"


def test_bucket_never_exceeds_the_limit_in_any_minute() -> None:
    rate, capacity = bucket_parameters(500, 0.95, 20)
    assert capacity + rate * 60 <= 500 and rate * 60 >= 0.95 * 500 - 1e-9
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    bucket = LocalTokenBucket(rate_per_s=rate, capacity=capacity, clock=lambda: clock[0], sleep=sleep)
    assert sum(bucket.acquire() for _ in range(int(capacity))) == 0  # the burst is free
    assert bucket.acquire() > 0  # the next one waits
    sent = [clock[0]]
    for _ in range(3000):  # six minutes of a backlog, in no time
        bucket.acquire()
        sent.append(clock[0])
    worst = max(sum(1 for t in sent if start <= t < start + 60) for start in sent)
    assert worst <= 500, f"{worst} requests in one minute"


def test_try_acquire_takes_a_free_token_and_never_waits() -> None:
    clock = [0.0]
    bucket = LocalTokenBucket(rate_per_s=1.0, capacity=2, clock=lambda: clock[0], sleep=lambda _s: None)
    assert bucket.try_acquire() and bucket.try_acquire() and not bucket.try_acquire()  # the burst, then none
    clock[0] += 0.5
    assert not bucket.try_acquire()  # half a token is not one
    clock[0] += 0.5
    assert bucket.try_acquire() and clock[0] == 1.0


def test_fields_that_can_become_empty_are_always_sent() -> None:
    # A sparse update keeps what it omits: a tax or memo removed in TimeTracker must be cleared in QBO.
    body = invoice_request(invoice(tax_amount="0", terms=None), InvoiceRefs("1", "2"), MappingOptions())
    assert body["TxnTaxDetail"] == {"TotalTax": 0} and body["CustomerMemo"] == {"value": ""}


def test_each_delivery_gets_its_own_requestids_and_a_redelivery_the_same() -> None:
    from consumer.group_consumer import delivery_generation

    first = SimpleNamespace(headers=[("id", b"e-1")])
    replayed = SimpleNamespace(headers=[("id", b"e-1"), ("ttsync.replay.count", b"2")])
    assert delivery_generation(first, None) == ""
    assert delivery_generation(first, 1) == "t1"
    assert delivery_generation(replayed, None) == "r2" and delivery_generation(replayed, 0) == "t0.r2"
    # the last tier, passed through again and again by a record that waits long: each pass its own requestid
    again = [SimpleNamespace(headers=[("id", b"e-1"), ("ttsync.errors.attempts", str(n).encode())]) for n in (5, 6)]
    assert [delivery_generation(r, 3) for r in again] == ["t3.a5", "t3.a6"]
    eid = uuid.uuid4()
    ids = {request_id(eid, "create", {"x": 1}, g) for g in ("", "t0", "t1", "r1")}
    assert len(ids) == 4  # QBO replays a Fault to the same requestid: a retry must not reuse the id that failed
    assert request_id(eid, "create", {"x": 1}, "t0") == request_id(eid, "create", {"x": 1}, "t0")


def test_a_consumer_out_of_its_group_too_long_exits_for_its_supervisor() -> None:
    from consumer.errors import ConsumerStuck
    from consumer.watchdog import GroupWatchdog
    from tests.fakes import StubBroker

    port = StubBroker().consumer("g")
    state = {"stable": False}
    port.in_stable_group = lambda: state["stable"]  # type: ignore[method-assign]
    now = [1000.0]
    watchdog = GroupWatchdog(port, "g", 120.0, clock=lambda: now[0])
    watchdog.check()  # starts the clock
    now[0] += 119
    watchdog.check()  # not yet
    state["stable"] = True
    watchdog.check()  # joined in time: the clock is reset
    state["stable"] = False
    now[0] += 500
    watchdog.check()
    now[0] += 121
    with pytest.raises(ConsumerStuck, match="not in a stable consumer group"):
        watchdog.check()
    watchdog.exit_after_s = 0  # 0 = never
    watchdog.check()


def test_a_consumer_out_of_its_group_while_the_broker_is_away_waits_in_place() -> None:
    """#21: with the broker down for minutes, no member joins a group; exiting (for a supervisor to start a member
    that cannot join either) only hid the outage. The watchdog exits when the broker answers and the group does
    not form."""
    from consumer.errors import ConsumerStuck
    from consumer.watchdog import GroupWatchdog
    from tests.fakes import StubBroker

    port = StubBroker().consumer("g")
    port.in_stable_group = lambda: False  # type: ignore[method-assign]
    broker = {"answers": False}
    now = [1000.0]
    watchdog = GroupWatchdog(port, "g", 120.0, clock=lambda: now[0], broker_answers=lambda: broker["answers"])
    watchdog.check()
    for _ in range(5):  # ten minutes of outage
        now[0] += 121
        watchdog.check()
    broker["answers"] = True  # back, and still no group after the full wait: stuck
    now[0] += 121
    with pytest.raises(ConsumerStuck):
        watchdog.check()


def _fetch_watchdog_on_a_stub(counts: dict[str, int]):  # type: ignore[no-untyped-def]
    from consumer.kafka_port import Partition
    from consumer.watchdog import FetchWatchdog
    from tests.fakes import StubBroker

    broker = StubBroker()
    tps = {topic: Partition(topic, 0) for topic in counts}
    for topic, count in counts.items():
        for n in range(count):
            broker.produce(topic, b"%d" % n)
    port = broker.consumer("g")
    port.subscribe(list(counts))
    seeks: list[tuple[Partition, int]] = []
    real_seek = port.seek
    port.seek = lambda tp, offset: (seeks.append((tp, offset)), real_seek(tp, offset))  # type: ignore[method-assign]
    now = [1000.0]
    return port, tps, seeks, now, FetchWatchdog(port, clock=lambda: now[0], quiet_s=15)


def test_a_partition_with_records_that_is_not_fetched_is_refetched_then_the_member_renewed() -> None:
    from consumer.errors import MemberStuck

    port, tps, seeks, now, watchdog = _fetch_watchdog_on_a_stub(
        {"p.payment.retry.10s": 8, "p.invoice": 5, "p.payment.retry.30s": 3})
    stuck, fine, waiting = tps["p.payment.retry.10s"], tps["p.invoice"], tps["p.payment.retry.30s"]
    port.fetch_positions.update({stuck: 0, fine: 5, waiting: 0})
    port.pause(stuck)
    port.pause(waiting)
    on_purpose = {waiting}  # not due yet: paused on purpose, never judged

    now[0] += 14
    watchdog.after_poll([], on_purpose)  # not quiet long enough: nothing asked
    assert seeks == [] and watchdog.strikes == {}

    now[0] += 2  # a whole quiet spell with records waiting: suspect at once, resumed and re-pointed
    watchdog.after_poll([], on_purpose)
    assert seeks == [(stuck, 0)] and stuck not in port.paused() and waiting in port.paused()

    port.fetch_positions[stuck] = 3  # it moved: fetched again, its strikes start over
    watchdog.after_poll([fine], on_purpose)  # (with records of another partition: a first strike counts one)
    now[0] += 16
    watchdog.after_poll([], on_purpose)
    assert watchdog.strikes == {stuck: (3, 1)} and seeks[-1] == (stuck, 0)
    now[0] += 16
    watchdog.after_poll([], on_purpose)  # unmoved since: re-pointed
    assert seeks[-1] == (stuck, 3)

    now[0] += 16
    with pytest.raises(MemberStuck, match=r"p\.payment\.retry\.10s\[0\]"):
        watchdog.after_poll([], on_purpose)  # same position after a refetch: a fresh member

    watchdog.after_poll([stuck], on_purpose)  # its records arrived: its strikes are gone
    assert watchdog.strikes == {}
    port.fetch_positions[stuck] = 8
    now[0] += 16
    watchdog.after_poll([], on_purpose)  # caught up: nothing to do
    assert watchdog.strikes == {}


def test_a_partition_left_unfetched_is_found_while_the_others_keep_delivering() -> None:
    """Seen with librdkafka after a broker restart: some partitions stay at position 0 while the rest deliver.
    Judged only when the whole consumer was quiet, they waited two minutes in a chaos run (and for ever under
    steady traffic); each partition is judged on its own at the empty polls between the others' records."""
    from consumer.errors import MemberStuck

    port, tps, seeks, now, watchdog = _fetch_watchdog_on_a_stub({"p.payment": 21, "p.invoice": 500})
    stuck, busy = tps["p.payment"], tps["p.invoice"]
    port.fetch_positions.update({stuck: 0, busy: 0})
    with pytest.raises(MemberStuck, match=r"p\.payment\[0\]"):
        for _ in range(200):  # every second a poll with records of the busy partition, then an empty one
            now[0] += 0.75
            port.fetch_positions[busy] += 1
            watchdog.after_poll([busy], set())
            now[0] += 0.25
            watchdog.after_poll([], set())
    assert now[0] - 1000.0 <= 3 * 15 + 1  # three checks 15 s apart
    assert seeks == [(stuck, 0)]  # refetched once first; the busy partition never judged


def test_after_the_broker_returns_partitions_left_unfetched_are_refetched_within_seconds() -> None:
    """The chaos suite's broker restart (kafka-python): the member lost its partitions at 09:36:05 and, rejoined,
    left some unfetched until the check 15 s later re-pointed them; the consumer idled meanwhile."""
    port, tps, seeks, now, watchdog = _fetch_watchdog_on_a_stub({"p.expense": 275, "p.invoice": 3})
    stuck, fine = tps["p.expense"], tps["p.invoice"]
    port.fetch_positions.update({stuck: 28, fine: 3})
    now[0] += 12
    watchdog.after_poll([], set())  # an ordinary quiet poll: nothing judged yet
    watchdog.judge_soon()  # the broker was away, or the partitions were lost
    for _ in range(19):  # empty polls, a quarter of a second apart
        now[0] += 0.25
        watchdog.after_poll([], set())
    assert seeks == []
    now[0] += 0.25
    watchdog.after_poll([], set())
    assert seeks == [(stuck, 28)] and now[0] - 1012 == 5  # 5 s after, not 15


def test_a_consumer_busy_with_a_backlog_does_not_judge_a_partition_waiting_its_turn() -> None:
    port, tps, seeks, now, watchdog = _fetch_watchdog_on_a_stub({"p.payment": 21, "p.invoice": 5000})
    waiting, busy = tps["p.payment"], tps["p.invoice"]
    port.fetch_positions.update({waiting: 0, busy: 0})
    for _ in range(300):  # five minutes of full polls (QBO's rate, say): the client never had nothing to give
        now[0] += 1
        port.fetch_positions[busy] += 10
        watchdog.after_poll([busy], set())
    assert seeks == [] and watchdog.strikes == {}


def test_the_old_connectors_qbo_id_is_read_where_timetracker_keeps_it() -> None:
    from consumer.mapping import legacy_qbo_id

    assert legacy_qbo_id("invoice", {"integration_metadata": {"quickbooks": {"invoice_id": "77"}}}) == "77"
    assert legacy_qbo_id("expense", {"integration_metadata": {"quickbooks": {"purchase_id": 12}}}) == "12"
    assert legacy_qbo_id("invoice", {"integration_metadata": {"quickbooks_id": "9"}}) == "9"  # the connector's own
    assert legacy_qbo_id("invoice", {"integration_metadata": {"quickbooks": {"invoice_id": " "}}}) is None
    assert legacy_qbo_id("invoice", {"integration_metadata": None}) is None
    assert legacy_qbo_id("payment", {"integration_metadata": {"quickbooks": {"id": "3"}}}) is None  # never synced


def test_a_guess_at_the_old_connectors_entity_never_merges_two_records() -> None:
    from consumer.mapping import legacy_match

    old = {"Id": "1", "TotalAmt": 300.75, "PrivateNote": None}
    ours = {"Id": "2", "TotalAmt": 300.75, "PrivateNote": "ttsync:invoice:5@tt"}
    other = {"Id": "3", "TotalAmt": 120.00}
    totals = {Decimal("300.75"), Decimal("330.83")}
    assert legacy_match([old, ours, other], totals) == (old, [])  # the amount decides; ttsync's own never counts
    assert legacy_match([ours], totals) == (None, [])
    changed = {**old, "TotalAmt": 999}
    assert legacy_match([changed], totals, lone=True) == (changed, [])  # changed since, but alone: taken
    assert legacy_match([changed], totals) == (None, [])  # only the date in common: too weak, and no twin to name
    assert legacy_match([changed, other], totals, lone=True) == (None, ["1", "3"])  # changed, not alone: create
    assert legacy_match([old, {**old, "Id": "4"}], totals) == (None, ["1", "4"])  # two fit: no guess


@settings(max_examples=300, deadline=None)
@given(headers=st.lists(st.tuples(st.sampled_from(["ttsync.errors.retry.due.at", "ttsync.errors.attempts",
                                                    "ttsync.errors.first.failure", "ttsync.replay.count",
                                                    "ttsync.errors.code", "id", "eventType"]),
                                  st.binary(max_size=40) | st.sampled_from([b"", b"2026-11-30T10:00:00Z", b"3"])),
                        max_size=6))
def test_any_headers_are_read_or_named_as_poison_never_a_crash(headers: list[tuple[str, bytes]]) -> None:
    """Every header the consumer reads back, forged or damaged, on any of its topics."""
    from consumer.dead_letter import check_headers, failing_for_s, replay_count
    from consumer.group_consumer import delivery_generation

    rec = SimpleNamespace(topic="tt.invoice.retry.10s", partition=0, offset=1, timestamp=0, key=b"1", value=b"{}",
                          headers=headers)
    try:
        check_headers(rec)
    except MalformedEvent as exc:
        assert exc.code == "malformed_header"
    due_at(rec)
    assert failing_for_s(rec) >= 0 and replay_count(rec) >= 0
    delivery_generation(rec, 0)
    out = forward(rec, target_topic="tt.dlq", error=MalformedEvent("x"), group_id="g", attempts_here=1)
    assert out.topic == "tt.dlq"


def test_markers_match_exactly_and_legacy_ids_are_digits() -> None:
    from consumer.mapping import carries, legacy_qbo_id, marker

    mark = marker("invoice", 1, "tt")
    assert carries(f"{mark} thanks", mark) and carries(mark, mark)
    assert not carries("ttsync:invoice:1@tt-eu thanks", mark)  # another TimeTracker instance's invoice
    assert not carries("ttsync:invoice:12@tt", mark)
    assert legacy_qbo_id("invoice", {"integration_metadata": {"quickbooks": {"invoice_id": "1234"}}}) == "1234"
    for bad in ("12 OR 1=1", "INV-9", "https://qbo/12", ""):
        assert legacy_qbo_id("invoice", {"integration_metadata": {"quickbooks": {"invoice_id": bad}}}) is None


def test_capture_source_and_snapshot_chunk_size_are_validated() -> None:
    import subprocess
    import sys

    from producer.trigger_capture import install_sql

    assert "'acme-eu.1'" in install_sql("acme-eu.1")
    for bad in ("", "two words", "x'; DROP TABLE invoices; --", "tt@eu"):
        with pytest.raises(ValueError, match="capture source"):
            install_sql(bad)
    refused = subprocess.run([sys.executable, "-m", "ttsync", "capture", "snapshot", "--chunk-size", "0"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "chunk-size" in refused.stderr


def test_a_client_name_is_sent_without_surrounding_blanks_and_a_blank_one_is_a_mapping_error() -> None:
    """Found by the property test: ' 0' went to QBO as ' 0', and ' ' made QBO answer Fault 2020."""
    opts = MappingOptions()
    assert customer_request(ClientState(id=1, name="  Acme & Co "), opts)["DisplayName"] == "Acme & Co"
    with pytest.raises(MappingError, match="blank name") as blank:
        customer_request(ClientState(id=2, name="   "), opts)
    assert blank.value.code == "blank_name" and not blank.value.retryable


def test_the_kafka_python_port_says_the_broker_is_away_when_a_poll_or_a_fresh_member_cannot_reach_it() -> None:
    """#21 soak, seed 1203: a poll's raw KafkaConnectionError (ECONNREFUSED) ended the consumer during a broker
    restart. A retriable client error is BrokerUnavailable (the loop waits); any other, an ACL say, is itself."""
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError, TopicAuthorizationFailedError

    from consumer.kafka_port import BrokerUnavailable, KafkaPythonConsumer

    class Failing:
        def __init__(self, error: Exception) -> None:
            self.error = error

        def poll(self, *args: Any, **kwargs: Any) -> Any:
            raise self.error

        def close(self, *args: Any, **kwargs: Any) -> None:
            pass

    port: Any = object.__new__(KafkaPythonConsumer)
    port._topics = ["tt.invoice"]
    for error, expected in [(KafkaConnectionError("111 ECONNREFUSED"), BrokerUnavailable),
                            (KafkaTimeoutError("Unable to bootstrap"), BrokerUnavailable),
                            (TopicAuthorizationFailedError(), TopicAuthorizationFailedError)]:
        port.consumer = Failing(error)
        with pytest.raises(expected):
            port.poll(250)

        def fresh_member(error: Exception = error) -> Any:
            raise error
        port._open = fresh_member
        with pytest.raises(expected):
            port.renew_membership()


@pytest.mark.parametrize("client", ["kafka-python", "librdkafka"])
def test_both_kafka_ports_say_why_a_commit_failed(client: str) -> None:
    """A commit the group refused (the member was replaced, or the group is rebalancing) is PartitionsLost: poll
    again; a broker that does not answer is BrokerUnavailable: wait. kafka-python raised CommitFailedError out of
    the loop, and the consumer exited. Its RebalanceInProgressError (CI, rolling restart of three brokers) was
    taken for an absent broker: the consumer waited to commit and never polled, and polling is what completes
    the rebalance, so it waited for ever."""
    from consumer.kafka_port import BrokerUnavailable, KafkaPythonConsumer, Partition, PartitionsLost

    if client == "kafka-python":
        from kafka.errors import (
            CommitFailedError,
            FencedInstanceIdError,
            IllegalGenerationError,
            KafkaTimeoutError,
            RebalanceInProgressError,
            UnknownMemberIdError,
        )

        port: Any = object.__new__(KafkaPythonConsumer)
        refused: list[Exception] = [
            CommitFailedError("kicked out"), RebalanceInProgressError("Offset commit cannot be completed since the "
                                                                      "consumer is undergoing a rebalance"),
            UnknownMemberIdError(), IllegalGenerationError(), FencedInstanceIdError()]
        away = KafkaTimeoutError("Timeout after waiting for 30.0 secs.")
    else:
        from confluent_kafka import KafkaError, KafkaException  # in the test lock

        from consumer.librdkafka_port import LibrdkafkaConsumer

        port = object.__new__(LibrdkafkaConsumer)
        refused = [KafkaException(KafkaError(code)) for code in (
            KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
            KafkaError._ASSIGNMENT_LOST, KafkaError.FENCED_INSTANCE_ID)]
        away = KafkaException(KafkaError(KafkaError._TRANSPORT))

    class Refusing:
        def __init__(self, error: Exception) -> None:
            self.error = error

        def commit(self, *args: Any, **kwargs: Any) -> None:
            raise self.error

    cases: list[tuple[Exception, type[Exception]]] = [(error, PartitionsLost) for error in refused]
    for error, expected in [*cases, (away, BrokerUnavailable)]:
        port.consumer = Refusing(error)
        with pytest.raises(expected):
            port.commit(Partition("tt.invoice", 0), 5)
