"""The consumer loop's rules on a stub broker (tests.fakes.StubBroker), an in-memory QBO and a SQLite state store:
what is committed when, what goes to a retry topic or the dead-letter topic and with which headers, and that a
redelivery after a crash writes nothing twice. The integration and chaos suites prove the same on a real broker."""

from __future__ import annotations

import datetime as dt

import pytest

from consumer.group_consumer import GroupConsumer
from consumer.kafka_port import Partition
from consumer.retry_policy import RetryPolicy
from consumer.state_store import Recorded
from schemas.codec import headers_to_dict
from schemas.contract import Header
from tests.consumer_harness import FakeParts, publish
from tests.fakes import StubBroker, StubConsumer
from tests.sandbox.test_books import CLIENT, ev, invoice

PAY = {"id": 5, "invoice_id": 1, "amount": "100.00", "payment_date": "2026-11-20", "method": "bank_transfer",
       "status": "completed"}


def committed(broker: StubBroker, topic: str, partition: int = 0) -> int | None:
    return broker.committed.get(("ttsync-test", Partition(topic, partition)))


def test_an_applied_record_is_committed(parts: FakeParts) -> None:
    broker = StubBroker()
    publish(broker, ev("invoice", invoice(), 1, "created"))
    stats = parts.group(broker).run(max_seconds=5, until=lambda s: s.applied == 1)
    assert stats.applied == 1 and committed(broker, "tt.invoice") == 1
    assert [i["DocNumber"] for i in parts.entities("Invoice")] == ["INV-0001"]


def test_a_poison_record_is_dead_lettered_with_its_reason_and_never_blocks_its_partition(parts: FakeParts) -> None:
    broker = StubBroker()
    broker.produce("tt.invoice", b"{not json", b"1", [("id", b"e-1")])
    publish(broker, ev("invoice", invoice(), 1, "created"))
    stats = parts.group(broker).run(max_seconds=5, until=lambda s: s.applied == 1)
    assert stats.dead_lettered == 1 and committed(broker, "tt.invoice") == 2
    [dead] = broker.records("tt.dlq")
    headers = headers_to_dict(dead.headers)
    assert dead.value == b"{not json" and dead.key == b"1" and headers["id"] == "e-1"  # the original, untouched
    assert headers[Header.ERROR_CODE] and headers[Header.ORIGINAL_TOPIC] == "tt.invoice"
    assert headers[Header.ORIGINAL_OFFSET] == "0" and headers[Header.ERROR_MESSAGE]


def test_a_record_waiting_for_another_goes_to_a_retry_topic_and_comes_back_when_due(parts: FakeParts) -> None:
    broker = StubBroker()
    publish(broker, ev("payment", PAY, 1, "created"))  # its invoice is not in QBO yet
    group = parts.group(broker, policy=RetryPolicy(inplace_attempts=1, backoff_base_s=0.001, topic_delays_s=(1,)))
    stats = group.run(max_seconds=5, until=lambda s: s.forwarded_to_retry == 1)
    assert committed(broker, "tt.payment") == 1 and stats.dead_lettered == 0
    [waiting] = broker.records("tt.payment.retry.1s")
    due = dt.datetime.fromisoformat(headers_to_dict(waiting.headers)[Header.RETRY_DUE_AT].replace("Z", "+00:00"))
    assert due > dt.datetime.now(dt.UTC)
    group.run(max_seconds=0.3)  # read, not due: the retry partition pauses, the main topics keep flowing
    retry_tp = Partition("tt.payment.retry.1s", 0)
    assert retry_tp in group.port.paused() and committed(broker, retry_tp.topic) is None
    publish(broker, ev("invoice", invoice(), 1, "created"))
    group.run(max_seconds=5, until=lambda s: s.applied == 2)  # the invoice, then the payment once due
    assert committed(broker, retry_tp.topic) == 1 and len(parts.entities("Payment")) == 1


def test_a_payment_refused_in_the_last_retry_tier_applies_once_its_invoices_larger_total_lands(
        parts: FakeParts) -> None:
    """Soak, seed 1203: a payment came before its invoice's larger total and QBO refused it (above the balance). In
    the last retry tier each attempt had the same requestid, so QBO answered its first Fault again, for ever (the
    payment would be dead-lettered after the dependency wait, and the invoice kept a balance TimeTracker has
    not). Each attempt in a retry tier now has a requestid of its own."""
    parts.applier.apply(ev("client", CLIENT, 1, "created"))
    parts.applier.apply(ev("invoice", invoice(items=[("1.00", "100.00")]), 1, "created"))
    broker = StubBroker()
    publish(broker, ev("payment", {**PAY, "amount": "240.00"}, 1, "created"))
    group = parts.group(broker, policy=RetryPolicy(inplace_attempts=0, backoff_base_s=0.001, topic_delays_s=(1,)))
    group.run(max_seconds=8, until=lambda s: s.forwarded_to_retry >= 3)  # refused in the last tier, twice
    assert len(parts.entities("Payment")) == 0
    parts.applier.apply(ev("invoice", invoice(items=[("2.00", "120.00")]), 2))  # the larger total: 240.00
    stats = group.run(max_seconds=8, until=lambda s: s.applied >= 1)
    assert stats.applied == 1 and stats.dead_lettered == 0
    [payment] = parts.entities("Payment")
    assert payment["TotalAmt"] == 240 and parts.entities("Invoice")[0]["Balance"] == 0


def test_a_sent_invoice_whose_create_failed_is_not_lost_when_the_daily_job_overtakes_it(parts: FakeParts) -> None:
    """Chaos, QBO 5xx: v1 (created as sent) was answered 503 and went to a retry topic; v2 (made overdue by
    TimeTracker's daily job) overtook it and was skipped as never issued; v1 then came back older than v2, and the
    sent invoice never reached QBO."""
    broker = StubBroker()
    parts.qbo.refuse("create", "Invoice")
    publish(broker, ev("invoice", invoice("sent"), 1, "created"))
    publish(broker, ev("invoice", invoice("overdue"), 2))
    group = parts.group(broker, policy=RetryPolicy(inplace_attempts=0, backoff_base_s=0.001, topic_delays_s=(0, 0)))
    stats = group.run(max_seconds=10, until=lambda s: s.applied == 2)
    assert stats.applied == 2 and stats.dead_lettered == 0 and stats.forwarded_to_retry == 2
    [created] = parts.entities("Invoice")
    assert created["DocNumber"] == "INV-0001" and parts.writes("create", "Invoice") == 2
    held = parts.store.mapped("invoice", "1")
    assert held is not None and held.last_version == 2 and held.qbo_id == created["Id"]


def test_a_version_depending_on_a_dead_lettered_one_follows_it_to_the_dead_letter_topic_at_once(
        parts: FakeParts) -> None:
    """Chaos, 1% poison: v1 and v2 of an invoice QBO refuses (its number is over 21 characters) were dead-lettered;
    v3, made overdue by the daily job, then waited in the retry topics for v1 to be settled, which only a replay
    can do: for the dependency wait (6 hours by default), with the group's lag never 0."""
    broker = StubBroker()
    number = "X" * 30
    publish(broker, ev("invoice", {**invoice("sent"), "invoice_number": number}, 1, "created"))
    publish(broker, ev("invoice", {**invoice("overdue"), "invoice_number": number}, 2))
    stats = parts.group(broker).run(max_seconds=5, until=lambda s: s.dead_lettered == 2)
    assert stats.dead_lettered == 2 and stats.forwarded_to_retry == 0 and committed(broker, "tt.invoice") == 2
    first, second = (headers_to_dict(r.headers) for r in broker.records("tt.dlq"))
    assert first[Header.ERROR_CODE] == "doc_number_too_long"
    assert second[Header.ERROR_CODE] == "earlier_version_dead_lettered"
    message = second[Header.ERROR_MESSAGE]
    assert "depends on version 1, which was dead-lettered" in message and "21-character DocNumber" in message
    assert not parts.entities("Invoice")
    # The notes age out with the processed events (ttsync_dead_lettered, migration 0008).
    noted = parts.store.dead_lettered_between("invoice", "1", 1, 5)
    assert [v for v, _ in noted] == [1, 2] and "21-character DocNumber" in noted[0][1]
    parts.store.purge_processed(dt.timedelta(0))
    assert parts.store.dead_lettered_between("invoice", "1", 1, 5) == []


def test_a_dead_letter_the_state_database_cannot_note_is_still_committed(parts: FakeParts,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The note only spares a later version its wait: the record is in the dead-letter topic already, so a state
    database that does not answer then neither stops the consumer nor sends the record there twice."""
    from consumer.errors import StateUnavailable

    def away(*_: object) -> None:
        raise StateUnavailable("state database unavailable: OperationalError")

    monkeypatch.setattr(parts.store, "note_dead_lettered", away)
    broker = StubBroker()
    publish(broker, ev("invoice", {**invoice("sent"), "invoice_number": "X" * 30}, 1, "created"))
    publish(broker, ev("invoice", invoice(invoice_id=2), 1, "created"))
    stats = parts.group(broker).run(max_seconds=5, until=lambda s: s.applied == 1)
    assert stats.dead_lettered == 1 and len(broker.records("tt.dlq")) == 1 and committed(broker, "tt.invoice") == 2


def test_a_crash_before_the_commit_redelivers_and_nothing_is_written_twice(parts: FakeParts) -> None:
    class Crash(Exception):
        pass

    def crash(point: str) -> None:
        if point == "before_offset_commit":
            raise Crash(point)

    broker = StubBroker()
    publish(broker, ev("client", CLIENT, 1, "created"))
    publish(broker, ev("invoice", invoice(), 1, "created"))
    with pytest.raises(Crash):
        parts.group(broker, crash=crash).run(max_seconds=5)
    assert committed(broker, "tt.invoice") is None or committed(broker, "tt.client") is None
    stats = parts.group(broker).run(max_seconds=5, until=lambda s: s.duplicates >= 1 and s.applied + s.duplicates == 2)
    assert stats.duplicates >= 1
    assert len(parts.entities("Invoice")) == 1 and parts.writes("create", "Invoice") == 1


def test_a_forward_the_broker_does_not_acknowledge_is_retried_before_the_commit(parts: FakeParts) -> None:
    broker = StubBroker()
    broker.produce("tt.invoice", b"poison", b"1")
    broker.fail_sends = 2
    group = parts.group(broker)
    group.forwarder.stopping = lambda _delay: False  # no waiting in the test
    stats = group.run(max_seconds=5, until=lambda s: s.dead_lettered == 1)
    assert stats.dead_lettered == 1 and len(broker.records("tt.dlq")) == 1 and committed(broker, "tt.invoice") == 1


def test_a_backlog_goes_to_qbo_in_batches_and_every_offset_is_committed(parts: FakeParts) -> None:
    broker = StubBroker()
    publish(broker, ev("client", CLIENT, 1, "created"))
    for n in range(1, 13):
        publish(broker, ev("invoice", invoice(invoice_id=n), 1, "created"))
    parts.applier.apply(ev("client", CLIENT, 1, "created"))  # the customer exists: invoices are plain creates
    stats = parts.group(broker, batch_min_records=5).run(max_seconds=10,
                                                        until=lambda s: s.applied + s.skipped >= 13)
    assert committed(broker, "tt.invoice") == 12 and len(parts.entities("Invoice")) == 12
    assert parts.writes("batch", "Batch") >= 1 and parts.writes("create", "Invoice") == 0
    assert stats.by_result.get("created") == 12


def test_a_backlogs_skips_are_recorded_together_before_their_aggregate_is_read_again(parts: FakeParts,
                                                                                   monkeypatch: pytest.MonkeyPatch
                                                                                   ) -> None:
    """Drafts stay local (skipped), and each skip is recorded in a transaction shared with the skips next to it.
    The draft's next version (made overdue by TimeTracker's daily job, still never issued) must see that record:
    read a version behind, it would wait in the retry topics for a version already settled."""
    broker = StubBroker()
    for n in range(1, 7):
        publish(broker, ev("invoice", invoice("draft", invoice_id=n), 1, "created"))
    for n in range(1, 7):
        publish(broker, ev("invoice", invoice("overdue", invoice_id=n), 2))
    transactions: list[int] = []
    real_record_many = parts.store.record_many
    monkeypatch.setattr(parts.store, "record_many", lambda done: transactions.append(len(done)) or
                        real_record_many(done))
    stats = parts.group(broker, batch_min_records=5).run(max_seconds=10, until=lambda s: s.skipped >= 12)
    assert stats.skipped == 12 and stats.forwarded_to_retry == 0 and committed(broker, "tt.invoice") == 12
    assert transactions == [6, 6] and not parts.entities("Invoice")
    assert all((m := parts.store.mapped("invoice", str(n))) is not None and m.last_version == 2 for n in range(1, 7))


def test_a_state_database_away_while_a_backlogs_skips_are_recorded_is_waited_out_in_place(
        parts: FakeParts, monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 of PostgreSQL as the skips of a backlog were written (outside the single path's handling): the
    consumer ended with StateUnavailable (the chaos suite's PostgreSQL scenario, a supervisor restart). It waits."""
    from consumer.errors import StateUnavailable

    broker = StubBroker()
    for n in range(1, 7):
        publish(broker, ev("invoice", invoice("draft", invoice_id=n), 1, "created"))
    refusals = [StateUnavailable("state database unavailable: connection refused")] * 2
    real_record_many = parts.store.record_many

    def record_many(done: list[Recorded]) -> None:
        if refusals:
            raise refusals.pop()
        real_record_many(done)

    monkeypatch.setattr(parts.store, "record_many", record_many)
    stats = parts.group(broker, batch_min_records=5, policy=RetryPolicy(backoff_base_s=0.01)).run(
        max_seconds=10, until=lambda s: s.skipped >= 6 and committed(broker, "tt.invoice") == 6)
    assert not refusals and stats.skipped == 6 and committed(broker, "tt.invoice") == 6
    assert all(parts.store.mapped("invoice", str(n)) is not None for n in range(1, 7))


def test_the_last_retry_tier_dead_letters_a_record_that_keeps_failing_for_its_own_sake(parts: FakeParts) -> None:
    broker = StubBroker()
    body = invoice()
    body["invoice_number"] = "X" * 40  # QBO's DocNumber takes 21 characters: a MappingError, permanent
    publish(broker, ev("invoice", body, 1, "created"))
    stats = parts.group(broker, policy=RetryPolicy(inplace_attempts=1, backoff_base_s=0.001)).run(
        max_seconds=5, until=lambda s: s.dead_lettered == 1)
    assert stats.dead_lettered == 1 and stats.forwarded_to_retry == 0
    assert headers_to_dict(broker.records("tt.dlq")[0].headers)[Header.ERROR_CODE]


def test_processed_events_past_their_retention_are_purged_and_a_redelivery_still_writes_nothing(
        parts: FakeParts) -> None:
    from sqlalchemy import select, update

    from consumer.housekeeping import ProcessedEventsRetention
    from consumer.state_tables import processed_events

    broker = StubBroker()
    old, recent = ev("invoice", invoice(), 1, "created"), ev("invoice", invoice(invoice_id=2), 1, "created")
    for event in (old, recent):
        publish(broker, event)
    parts.group(broker).run(max_seconds=5, until=lambda s: s.applied == 2)
    with parts.engine.begin() as conn:
        conn.execute(update(processed_events).where(processed_events.c.event_id == str(old.event_id))
                     .values(processed_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=40)))
    group = parts.group(broker)
    group.retention = ProcessedEventsRetention(parts.store, dt.timedelta(days=30))
    publish(broker, old)  # Kafka delivers it again after its id was forgotten (a replay, a reset group)
    stats = group.run(max_seconds=5, until=lambda s: s.skipped == 1)
    with parts.engine.connect() as conn:
        outcomes = dict(conn.execute(select(processed_events.c.event_id, processed_events.c.outcome)).all())
    # The old "created" row was purged: the redelivery is recorded afresh, as skipped (a kept row would stay).
    assert outcomes == {str(old.event_id): "skipped", str(recent.event_id): "created"}
    assert stats.skipped == 1 and parts.writes("create", "Invoice") == 2  # the entity map's version guards it
    assert len(parts.entities("Invoice")) == 2


def test_retention_shorter_than_kafka_may_redeliver_is_refused() -> None:
    from ttsync.settings import Settings

    assert Settings().processed_events_retention == dt.timedelta(days=365 + 30)  # the DLQ's, and a margin
    assert Settings(dlq_retention_days=0).processed_events_retention is None  # dead letters kept for ever
    for days, dlq in ((3, 0), (30, 365)):
        with pytest.raises(ValueError, match="PROCESSED_EVENTS_RETENTION_DAYS"):
            Settings(processed_events_retention_days=days, dlq_retention_days=dlq)


def test_a_backlog_writes_alone_while_no_batch_request_is_free_and_keeps_its_batches_full(parts: FakeParts) -> None:
    """QBO allows 40 batch requests a minute within its 500: waiting for a free one left the rest of the budget
    unused (1,080 writes/min of the 1,660 QBO allows). While none is free, the oldest pending write goes alone."""
    broker = StubBroker()
    for n in range(1, 41):
        publish(broker, ev("invoice", invoice(invoice_id=n), 1, "created"))
    parts.applier.apply(ev("client", CLIENT, 1, "created"))  # the customer exists: invoices are plain creates
    parts.qbo.batch_budget = 1  # one batch request free during this backlog
    stats = parts.group(broker, batch_min_records=5).run(max_seconds=10, until=lambda s: s.applied >= 40)
    assert committed(broker, "tt.invoice") == 40 and len(parts.entities("Invoice")) == 40
    assert parts.writes("batch", "Batch") == 1 and parts.writes("create", "Invoice") == 10
    assert stats.by_result.get("created") == 40
    [batch_request] = [i for i, call in enumerate(parts.qbo.calls) if call == ("batch", "Batch")]
    assert parts.qbo.calls[:batch_request].count(("create", "Invoice")) == 0  # the first full batch went as one


def _old_connectors_customers(parts: FakeParts, names: list[str]) -> dict[str, str]:
    """Customers in QBO before ttsync, as TimeTracker's old connector made them (no marker): name -> QBO id."""
    made = {name: str(parts.qbo.create("Customer", {"DisplayName": name, "CurrencyRef": {"value": "EUR"}},
                                      f"old-{name}")["Id"]) for name in names}
    parts.qbo.calls.clear()
    return made


def test_a_backlogs_clients_whose_names_qbo_holds_are_adopted_in_batch_requests(parts: FakeParts) -> None:
    """#19: each client the old connector had made was created in a batch item QBO refused (6240 name taken),
    then created again alone, looked up by a query and adopted by an update of its own: a quarter of a backfill's
    request budget. Their names are now read in one query and the adoptions go in the batch."""
    made = _old_connectors_customers(parts, [f"Client {n}" for n in range(1, 13)])
    broker = StubBroker()
    for n in range(1, 13):
        publish(broker, ev("client", {"id": n, "name": f"Client {n}", "email": f"c{n}@x.test", "status": "active"},
                           1, "created"))
    stats = parts.group(broker, batch_min_records=5).run(max_seconds=10, until=lambda s: s.applied >= 12)
    assert stats.by_result.get("adopted") == 12 and committed(broker, "tt.client") == 12
    assert parts.writes("create", "Customer") == parts.writes("update", "Customer") == 0
    assert parts.writes("query", "Customer") == 1 and parts.writes("batch", "Batch") == 1
    customers = parts.entities("Customer")
    assert len(customers) == 12 and all("ttsync:client:" in (c.get("Notes") or "") for c in customers)
    assert {n: parts.store.mapped("client", str(n)).qbo_id for n in range(1, 13)} == {  # type: ignore[union-attr]
        n: made[f"Client {n}"] for n in range(1, 13)}


def test_a_backlogs_invoices_find_the_customers_of_unmapped_clients_in_one_query(parts: FakeParts) -> None:
    """Invoices that come before their clients looked each customer up by a query of its own. One client's name
    is not in QBO: known absent, its customer is created without a lookup first."""
    _old_connectors_customers(parts, [f"Client {n}" for n in range(1, 12)])
    broker = StubBroker()
    for n in range(1, 13):
        client = {"id": n, "name": f"Client {n}", "status": "active"}
        publish(broker, ev("invoice", invoice(invoice_id=n, client=client), 1, "created"))
    stats = parts.group(broker, batch_min_records=5).run(max_seconds=10, until=lambda s: s.applied >= 12)
    assert stats.by_result.get("created") == 12 and len(parts.entities("Invoice")) == 12
    assert parts.writes("query", "Customer") == 1 and parts.writes("create", "Customer") == 1
    assert len(parts.entities("Customer")) == 12


def test_a_backlog_whose_customer_query_fails_still_applies_each_record(parts: FakeParts) -> None:
    """The bulk read only saves requests: QBO failing it (503) leaves each client to its own create and lookup."""
    _old_connectors_customers(parts, [f"Client {n}" for n in range(1, 7)])
    broker = StubBroker()
    for n in range(1, 7):
        publish(broker, ev("client", {"id": n, "name": f"Client {n}", "status": "active"}, 1, "created"))
    parts.qbo.refuse("query", "Customer")
    stats = parts.group(broker, batch_min_records=5).run(max_seconds=10, until=lambda s: s.applied >= 6)
    assert stats.applied == 6 and stats.dead_lettered == 0 and len(parts.entities("Customer")) == 6
    assert parts.writes("query", "Customer") > 1  # the failed bulk read, then one lookup per refused create


def test_what_is_due_in_a_retry_topic_goes_to_qbo_in_batch_requests(parts: FakeParts) -> None:
    """A backfill's payments come before their invoices and wait in a retry topic; they come back together, and
    went to QBO one request each (the drain's last 40 s without a batch request, benchmarks/backfill.py)."""
    broker = StubBroker()
    policy = RetryPolicy(inplace_attempts=0, backoff_base_s=0.001, topic_delays_s=(1,))
    parts.applier.apply(ev("client", CLIENT, 1, "created"))
    for n in range(1, 13):
        publish(broker, ev("payment", {**PAY, "id": n, "invoice_id": n, "amount": "10.00"}, 1, "created"))
    group = parts.group(broker, policy=policy, batch_min_records=5)
    group.run(max_seconds=5, until=lambda s: s.forwarded_to_retry == 12)  # no invoice in QBO yet: all wait
    for n in range(1, 13):
        parts.applier.apply(ev("invoice", invoice(invoice_id=n), 1, "created"))
    group.run(max_seconds=0.2)  # the retry partition is read, not due yet: paused
    stats = group.run(max_seconds=10, until=lambda s: s.applied >= 12)
    assert stats.applied == 12 and len(parts.entities("Payment")) == 12
    assert parts.writes("batch", "Batch") >= 1 and parts.writes("create", "Payment") < 12
    assert committed(broker, "tt.payment.retry.1s") == 12


def test_a_commit_while_the_broker_is_away_waits_in_place_and_goes_through(parts: FakeParts) -> None:
    """#21: with the broker down, the commit timed out (KafkaTimeoutError) and the consumer exited; its supervisor
    restarted it. It now waits for the broker in place."""
    from consumer.kafka_port import BrokerUnavailable

    broker = StubBroker()
    broker.fail_commits = [BrokerUnavailable("KafkaTimeoutError: Timeout after waiting for 30.0 secs."),
                           BrokerUnavailable("NoBrokersAvailable")]
    publish(broker, ev("invoice", invoice(), 1, "created"))
    stats = parts.group(broker).run(max_seconds=10, until=lambda s: committed(broker, "tt.invoice") == 1)
    assert stats.applied == 1 and committed(broker, "tt.invoice") == 1 and not broker.fail_commits


def test_a_poll_while_the_broker_is_away_waits_in_place_and_reads_on(parts: FakeParts) -> None:
    """#21 soak, seed 1203: during a 12 s broker restart a poll's KafkaConnectionError (ECONNREFUSED) escaped the
    loop and the consumer exited for its supervisor. The port says BrokerUnavailable; the loop waits and polls
    again."""
    from consumer.kafka_port import BrokerUnavailable

    broker = StubBroker()
    broker.fail_polls = [BrokerUnavailable("KafkaConnectionError: 111 ECONNREFUSED") for _ in range(3)]
    publish(broker, ev("invoice", invoice(), 1, "created"))
    stats = parts.group(broker).run(max_seconds=20, until=lambda s: committed(broker, "tt.invoice") == 1)
    assert stats.applied == 1 and committed(broker, "tt.invoice") == 1 and not broker.fail_polls


def test_a_member_renewed_while_the_broker_is_away_is_renewed_once_it_answers(parts: FakeParts) -> None:
    """A fresh KafkaConsumer bootstraps in its constructor: with the broker away it fails. The loop waits and
    renews again, and that wait does not spend the renewal budget (one renewal, not three)."""
    from consumer.kafka_port import BrokerUnavailable

    broker = StubBroker()
    broker.fail_renewals = [BrokerUnavailable("KafkaTimeoutError: Unable to bootstrap") for _ in range(4)]
    publish(broker, ev("invoice", invoice(), 1, "created"))
    group = parts.group(broker)
    port = _member_unserved_until_renewed(group, 1)
    stats = group.run(max_seconds=30, until=lambda s: s.applied == 1 and committed(broker, "tt.invoice") == 1)
    assert stats.applied == 1 and committed(broker, "tt.invoice") == 1 and not broker.fail_renewals
    assert port.renewals == 1 and stats.member_renewals == 1


def test_a_commit_refused_after_a_rebalance_does_not_end_the_consumer(parts: FakeParts) -> None:
    """A member kicked out of its group while the broker was away (CommitFailedError) rejoins at its next poll;
    the record whose commit was refused goes to whoever owns its partition then (applied once: it is recorded)."""
    from consumer.kafka_port import PartitionsLost

    broker = StubBroker()
    broker.fail_commits = [PartitionsLost("CommitFailedError: the consumer is not part of an active group")]
    publish(broker, ev("invoice", invoice(), 1, "created"))
    group = parts.group(broker)
    stats = group.run(max_seconds=5, until=lambda s: s.applied == 1 and committed(broker, "tt.invoice") == 1)
    assert stats.applied == 1 and committed(broker, "tt.invoice") == 1 and len(parts.entities("Invoice")) == 1
    publish(broker, ev("invoice", invoice(invoice_id=2), 1, "created"))
    stats = group.run(max_seconds=5, until=lambda s: s.applied == 2)
    assert stats.applied == 2 and committed(broker, "tt.invoice") == 2


def test_a_partition_whose_commit_was_refused_is_committed_without_waiting_for_new_records(
        parts: FakeParts) -> None:
    """Chaos, rebalance on librdkafka (a member leaves, cooperative-sticky): the last commit of a partition was
    refused ("generation id is not valid") and the member kept the partition. Its records were applied, but the
    client's position was past them and no new record came to commit over them: the group's lag stayed at 35
    for good. The partition is now read again from the refused batch; the applier finds them done and commits."""
    from consumer.kafka_port import PartitionsLost

    broker = StubBroker()
    broker.fail_commits = [PartitionsLost("Commit failed: Broker: Specified group generation id is not valid")]
    for n in range(1, 6):
        publish(broker, ev("invoice", invoice(invoice_id=n), 1, "created"))
    stats = parts.group(broker).run(max_seconds=5, until=lambda s: committed(broker, "tt.invoice") == 5)
    assert committed(broker, "tt.invoice") == 5, "the refused commit was never made good"
    assert stats.applied == 5 and stats.duplicates == 5 and len(parts.entities("Invoice")) == 5


def test_what_a_poll_fetched_after_a_refused_commit_is_read_again(parts: FakeParts) -> None:
    """Chaos, rebalance on librdkafka: a commit refused mid-poll ("generation id is not valid") left the rest of
    that poll unread while the client's position was past it; the member kept its partitions (cooperative
    rebalancing), so those records were never applied."""
    from consumer.kafka_port import PartitionsLost

    broker = StubBroker(partitions=2)
    broker.fail_commits = [PartitionsLost("Commit failed: Broker: Specified group generation id is not valid")]
    for n in range(1, 9):  # keys 1..8 over both partitions: one poll fetches both
        publish(broker, ev("invoice", invoice(invoice_id=n), 1, "created"))
    stats = parts.group(broker).run(max_seconds=5, until=lambda s: s.applied == 8)
    assert stats.applied == 8 and len(parts.entities("Invoice")) == 8


def test_a_backlog_waits_for_the_state_database_in_place(parts: FakeParts) -> None:
    """#21, chaos (kill -9 of durable PostgreSQL): the realm's batch budget is a row of the state database; reading
    it raised out of the backlog path and ended the consumer, which a supervisor had to restart."""
    from consumer.errors import StateUnavailable

    broker = StubBroker()
    for n in range(1, 13):
        publish(broker, ev("invoice", invoice(invoice_id=n), 1, "created"))
    parts.applier.apply(ev("client", CLIENT, 1, "created"))
    away = iter(range(3))

    def reserve_batch() -> bool:
        if next(away, None) is not None:
            raise StateUnavailable("connection refused")
        return True
    parts.qbo.reserve_batch = reserve_batch  # type: ignore[method-assign]
    stats = parts.group(broker, batch_min_records=5).run(max_seconds=10, until=lambda s: s.applied >= 12)
    assert stats.applied == 12 and committed(broker, "tt.invoice") == 12 and len(parts.entities("Invoice")) == 12


def _member_unserved_until_renewed(group: GroupConsumer, renewals_needed: int) -> StubConsumer:
    """A member the client stops serving, as kafka-python did after a broker restart: out of a stable group and
    fetching nothing until it is replaced ``renewals_needed`` times."""
    port = group.port
    assert isinstance(port, StubConsumer)
    real_poll = port.poll
    port.in_stable_group = lambda: port.renewals >= renewals_needed  # type: ignore[method-assign]
    port.poll = (  # type: ignore[method-assign]
        lambda timeout_ms: real_poll(timeout_ms) if port.renewals >= renewals_needed else {})
    group.group_watchdog.exit_after_s = 0.05
    return port


def test_a_member_the_client_stopped_serving_is_replaced_in_place(parts: FakeParts) -> None:
    """#21, chaos (broker restart, kafka-python): after the broker came back the member rejoined and then fetched
    none of its partitions; the watchdog ended the process for its supervisor to restart. The loop now replaces
    the member in place (a fresh client), which reads from the committed offsets."""
    broker = StubBroker()
    publish(broker, ev("invoice", invoice(), 1, "created"))
    group = parts.group(broker)
    port = _member_unserved_until_renewed(group, 1)
    stats = group.run(max_seconds=10, until=lambda s: s.applied == 1)
    assert stats.applied == 1 and committed(broker, "tt.invoice") == 1
    assert port.renewals == 1 and stats.member_renewals == 1 and not port.closed


def test_a_member_that_stays_stuck_after_renewals_ends_the_consumer(parts: FakeParts) -> None:
    """Renewing is not for ever: after ``RENEWALS_MAX`` fresh members in the window the process exits, for its
    supervisor (and its operator) to see."""
    from consumer.errors import ConsumerStuck
    from consumer.watchdog import RENEWALS_MAX

    broker = StubBroker()
    publish(broker, ev("invoice", invoice(), 1, "created"))
    group = parts.group(broker)
    port = _member_unserved_until_renewed(group, RENEWALS_MAX + 1)
    with pytest.raises(ConsumerStuck, match=f"already replaced {RENEWALS_MAX} times"):
        group.run(max_seconds=10)
    assert port.renewals == RENEWALS_MAX and committed(broker, "tt.invoice") is None
