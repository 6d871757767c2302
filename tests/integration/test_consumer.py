"""The consumer against a real broker, a real PostgreSQL and the QBO sandbox."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from consumer.kafka_port import ConsumerPort, KafkaPythonConsumer
from consumer.state_tables import entity_map, oauth_tokens
from producer.timetracker_schema import Client, Expense, Invoice, Payment
from tests.pipeline import Pipeline, wait_until
from tests.timetracker_data import base_rows, new_expense, new_invoice, new_payment

pytestmark = pytest.mark.integration


def applied(n: int):  # type: ignore[no-untyped-def]
    return lambda s: s.applied + s.skipped + s.duplicates + s.dead_lettered >= n


def test_invoice_lifecycle_gives_one_invoice_updated_then_voided(pipeline: Pipeline) -> None:
    with Session(pipeline.engine) as s:
        user, client, project = base_rows(s, name="Lifecycle & Co")
        inv = new_invoice(s, user, client, project, number="INV-100", items=2)
        s.commit()
        invoice_id = inv.id
    steps = ["sent", "paid", "cancelled"]
    with Session(pipeline.engine) as s:
        for status in steps:
            s.get_one(Invoice, invoice_id).status = status
            s.commit()
    assert pipeline.relay() == 5  # client.created, invoice.created (draft), sent, paid, cancelled
    pipeline.consume_until(applied(5))

    invoices = pipeline.qbo("Invoice")
    assert len(invoices) == 1
    qbo_inv = invoices[0]
    assert qbo_inv["DocNumber"] == "INV-100"
    assert qbo_inv["PrivateNote"].startswith("Voided") and qbo_inv["TotalAmt"] == 0
    assert int(qbo_inv["SyncToken"]) >= 2  # created (sent), updated (paid), voided
    customers = pipeline.qbo("Customer")
    assert [c["DisplayName"] for c in customers] == ["Lifecycle & Co"]
    with pipeline.engine.connect() as conn:
        row = conn.execute(select(entity_map).where(entity_map.c.aggregate_type == "invoice")).one()
    assert row.qbo_id == qbo_inv["Id"] and row.qbo_status == "voided" and row.last_version == 4
    assert all(n == 1 for n in pipeline.writes_per_requestid().values())


def test_expense_and_payment(pipeline: Pipeline) -> None:
    with Session(pipeline.engine) as s:
        user, client, project = base_rows(s, name="Payer Inc")
        inv = new_invoice(s, user, client, project, number="INV-200", items=1, status="sent")
        exp = new_expense(s, user, category="travel", status="approved", amount="42.10")
        rejected = new_expense(s, user, category="meals", status="approved", amount="10.00")
        s.commit()
        pay = new_payment(s, inv, amount="50.00")
        s.commit()
        s.get_one(Expense, rejected.id).status = "rejected"
        s.commit()
        exp_id, inv_id = exp.id, inv.id
    pipeline.relay()
    # The payment waits in a retry topic for its invoice; the invoice's own events (the payment row changes it
    # too) may all be applied before it comes back.
    pipeline.consume_until(lambda s: s.applied >= 6 and len(pipeline.qbo("Payment")) == 1)

    purchases = pipeline.qbo("Purchase")
    assert len(purchases) == 1
    purchase = purchases[0]
    assert purchase["DocNumber"] == f"TT-EXP-{exp_id}" and purchase["TotalAmt"] == 46.31
    assert purchase["PaymentType"] == "CreditCard"  # payment_method "card"
    travel = next(a for a in pipeline.qbo("Account") if a["Name"] == "Travel")
    assert purchase["Line"][0]["AccountBasedExpenseLineDetail"]["AccountRef"]["value"] == travel["Id"]
    assert [v["DisplayName"] for v in pipeline.qbo("Vendor")] == ["Rail Co"]
    assert len(pipeline.qbo_deleted("Purchase")) == 1  # the rejected one: created, then deleted

    payments = pipeline.qbo("Payment")
    assert len(payments) == 1 and payments[0]["TotalAmt"] == 50
    qbo_invoice = pipeline.qbo("Invoice")[0]
    assert payments[0]["Line"][0]["LinkedTxn"][0]["TxnId"] == qbo_invoice["Id"]
    assert qbo_invoice["Balance"] == qbo_invoice["TotalAmt"] - 50
    assert pay is not None and inv_id


def test_payment_before_its_invoice_waits_in_a_retry_topic(pipeline: Pipeline) -> None:
    """A payment whose invoice is not in QBO yet is retried later without blocking anything."""
    with Session(pipeline.engine) as s:
        user, client, project = base_rows(s)
        inv = new_invoice(s, user, client, project, number="INV-300", items=1, status="draft")
        s.commit()
        new_payment(s, inv, amount="10.00")
        s.commit()
        invoice_id = inv.id
    pipeline.relay()
    pipeline.consume_until(lambda s: s.forwarded_to_retry >= 1 and s.applied + s.skipped >= 2, timeout_s=60)
    with Session(pipeline.engine) as s:
        s.get_one(Invoice, invoice_id).status = "sent"
        s.commit()
    pipeline.relay()
    pipeline.consume_until(lambda s: len(pipeline.qbo("Payment")) == 1, timeout_s=60)
    assert len(pipeline.qbo("Invoice")) == 1


def test_validation_fault_and_malformed_record_go_to_the_dlq_and_later_records_pass(pipeline: Pipeline) -> None:
    from kafka import KafkaProducer

    from schemas import dlq_topic, headers_to_dict, topic_for
    from tests.kafka_helpers import read_topics

    with Session(pipeline.engine) as s:
        user, client, project = base_rows(s)
        # DocNumber over 21 characters: a mapping error, and an unknown category: a missing mapping
        new_invoice(s, user, client, project, number="INV-THIS-NUMBER-IS-WAY-TOO-LONG", items=1, status="sent")
        new_expense(s, user, category="equipment rental", status="approved")
        s.commit()
    pipeline.relay()
    producer = KafkaProducer(bootstrap_servers=pipeline.bootstrap)
    producer.send(topic_for("invoice", pipeline.prefix), key=b"999", value=b"{not json",
                  headers=[("id", b"bad-1")]).get(10)
    producer.close()
    with Session(pipeline.engine) as s:  # after the poison, on the same topics
        user, client, project = base_rows(s, name="After Poison")
        new_invoice(s, user, client, project, number="INV-OK", items=1, status="sent")
        new_expense(s, user, category="travel", status="approved")
        s.commit()
    pipeline.relay()
    pipeline.consume_until(lambda s: s.dead_lettered >= 3 and len(pipeline.qbo("Invoice")) == 1
                           and len(pipeline.qbo("Purchase")) == 1, timeout_s=60)
    assert [i["DocNumber"] for i in pipeline.qbo("Invoice")] == ["INV-OK"]

    dlq = read_topics(pipeline.bootstrap, [dlq_topic(pipeline.prefix)], until=lambda r: len(r) >= 3)
    by_code = {headers_to_dict(r.headers)["ttsync.errors.code"]: r for r in dlq}
    assert set(by_code) == {"doc_number_too_long", "missing_account", "malformed_event"}
    poison = headers_to_dict(by_code["malformed_event"].headers)
    assert by_code["malformed_event"].value == b"{not json" and by_code["malformed_event"].key == b"999"
    assert poison["id"] == "bad-1"  # original headers kept
    assert poison["ttsync.errors.original.topic"] == topic_for("invoice", pipeline.prefix)
    for name in ("original.partition", "original.offset", "original.timestamp", "consumer.group", "class.name",
                 "message", "attempts", "first.failure", "last.failure"):
        assert f"ttsync.errors.{name}" in poison, name
    missing = headers_to_dict(by_code["missing_account"].headers)
    assert "equipment rental" in missing["ttsync.errors.message"]
    assert missing["ttsync.errors.class.name"] == "consumer.errors.MissingMapping"


def test_qbo_validation_fault_is_dead_lettered_with_its_fault(pipeline: Pipeline) -> None:
    from schemas import dlq_topic, headers_to_dict
    from tests.kafka_helpers import read_topics
    from tests.sandbox.client import QboTestClient

    with Session(pipeline.engine) as s:
        user, client, project = base_rows(s, name="Soon Inactive")
        inv = new_invoice(s, user, client, project, number="INV-610", items=1, status="sent")
        s.commit()
        invoice_id = inv.id
    pipeline.relay()
    pipeline.consume_until(applied(2))
    # Someone makes the customer inactive in QBO; the next invoice update is refused with Fault 610.
    token = pipeline.admin("tokens", {"realm_id": "9130000000000001"})["refresh_token"]
    qbo = QboTestClient(pipeline.sandbox.url, pipeline.sandbox.token_url, "9130000000000001", "ttsync-local",
                        "ttsync-local-secret", token)
    customer = pipeline.qbo("Customer")[0]
    qbo.create("customer", {"Id": customer["Id"], "SyncToken": customer["SyncToken"], "sparse": True,
                            "Active": False})
    with Session(pipeline.engine) as s:
        s.get_one(Invoice, invoice_id).status = "paid"
        s.commit()
    pipeline.relay()
    pipeline.consume_until(lambda st: st.dead_lettered >= 1)
    dlq = read_topics(pipeline.bootstrap, [dlq_topic(pipeline.prefix)], until=lambda r: len(r) >= 1)
    headers = headers_to_dict(dlq[0].headers)
    assert headers["ttsync.errors.qbo.fault.code"] == "610"
    assert json.loads(headers["ttsync.errors.qbo.fault.body"])["Fault"]["type"] == "ValidationFault"
    assert headers["ttsync.errors.class.name"] == "consumer.errors.QboValidationFault"
    assert headers["ttsync.errors.attempts"] == "1"  # not retried: it cannot succeed as it is


def test_access_token_expiry_mid_run_is_refreshed_and_rotation_stored(pipeline: Pipeline) -> None:
    with Session(pipeline.engine) as s:
        user, client, project = base_rows(s)
        for n in range(3):
            new_invoice(s, user, client, project, number=f"INV-T{n}", items=1, status="sent")
        s.commit()
    pipeline.relay()
    pipeline.consume_until(applied(4))
    first_refreshes = pipeline.admin("stats")["token_refreshes"]
    pipeline.admin("expire-tokens", {})
    with Session(pipeline.engine) as s:
        for inv in s.scalars(select(Invoice)):
            inv.status = "paid"
        s.commit()
    pipeline.relay()
    pipeline.consume_until(applied(3))
    assert pipeline.admin("stats")["token_refreshes"] == first_refreshes + 1
    assert all(i["SyncToken"] == "1" for i in pipeline.qbo("Invoice"))
    with pipeline.engine.connect() as conn:
        row = conn.execute(select(oauth_tokens)).one()
    assert row.rotations >= 2
    assert "RT1-" not in row.refresh_token_enc and "AT-" not in (row.access_token_enc or "")  # encrypted
    assert pipeline.refresh_token != row.refresh_token_enc


def test_older_version_after_newer_changes_nothing_and_replay_creates_nothing(pipeline: Pipeline) -> None:
    from kafka import KafkaProducer

    from schemas import all_topics
    from tests.kafka_helpers import read_topics

    with Session(pipeline.engine) as s:
        user, client, project = base_rows(s)
        inv = new_invoice(s, user, client, project, number="INV-V", items=1, status="sent")
        s.commit()
        inv.notes = "second"
        s.commit()
        inv.notes = "third"
        s.commit()
    pipeline.relay()
    pipeline.consume_until(applied(4))
    assert pipeline.qbo("Invoice")[0]["PrivateNote"].endswith("third")
    writes_before = pipeline.writes_per_requestid()
    invoices_before = pipeline.qbo("Invoice")

    # Replay everything, newest first per key: all duplicates or older versions
    records = read_topics(pipeline.bootstrap, all_topics(pipeline.prefix), idle_s=2)
    producer = KafkaProducer(bootstrap_servers=pipeline.bootstrap)
    for rec in reversed(records):
        producer.send(rec.topic, key=rec.key, value=rec.value, headers=list(rec.headers))
    producer.flush()
    producer.close()
    stats = pipeline.consume_until(applied(len(records)))
    assert stats.applied == 0 and stats.duplicates == len(records)
    assert pipeline.writes_per_requestid() == writes_before
    assert pipeline.qbo("Invoice") == invoices_before

    # The same events under a new consumer group (fresh offsets, same state): older versions are skipped
    stats = pipeline.consume_until(applied(len(records)), group_id=pipeline.group + "-b")
    assert stats.applied == 0
    assert pipeline.qbo("Invoice") == invoices_before
    _ = (json, dt, Client, Payment)


def _invoices(pipeline: Pipeline, n: int, prefix: str = "INV-K") -> None:
    with Session(pipeline.engine) as s:
        user, client, project = base_rows(s)
        for i in range(n):
            new_invoice(s, user, client, project, number=f"{prefix}{i}", items=1, status="sent")
        s.commit()


@pytest.mark.slow
def test_kill_9_between_qbo_write_and_offset_commit_creates_no_duplicate(pipeline: Pipeline) -> None:
    _invoices(pipeline, 8)
    pipeline.relay()
    # The consumer SIGKILLs itself right after QBO created the 3rd entity, before anything was recorded.
    proc = pipeline.consume_process(TTSYNC_TEST_CRASH_AT="after_qbo_create", TTSYNC_TEST_CRASH_AFTER="3")
    assert proc.wait(120) == -9
    # 3 applier creates happened (the customer may be one of them, or be created by the resolver)
    assert 2 <= len(pipeline.qbo("Invoice")) <= 3
    proc = pipeline.consume_process()
    try:
        from tests.pipeline import wait_until

        wait_until(lambda: len(pipeline.qbo("Invoice")) >= 8, 90, "all invoices in QBO")
        pipeline.consume_until(applied(0), timeout_s=5)  # let the group settle; nothing more to do
    finally:
        proc.terminate()
        proc.wait(30)
    docs = [i["DocNumber"] for i in pipeline.qbo("Invoice")]
    assert sorted(docs) == sorted(f"INV-K{i}" for i in range(8))  # each exactly once
    assert len(pipeline.qbo("Customer")) == 1


@pytest.mark.slow
def test_429_storm_and_20_percent_5xx_end_with_every_event_applied(pipeline: Pipeline) -> None:
    pipeline.admin("config", {"error_rate": 0.2, "latency_ms": 5, "throttle_rate": 0.15,
                              "throttle_retry_after_s": 0.2, "seed": 11})
    _invoices(pipeline, 30, prefix="INV-S")
    with Session(pipeline.engine) as s:
        for inv in s.scalars(select(Invoice)):
            inv.status = "paid"
            inv.notes = "paid in full"
        s.commit()
    pipeline.relay()
    # 61 events: the client, 30 invoices created and 30 paid. One whose first attempt went to a retry topic may
    # come back after its newer version was applied: it is then skipped as older, which is right.
    pipeline.consume_until(lambda st: applied(61)(st) and len(pipeline.qbo("Invoice")) == 30, timeout_s=180)
    stats = pipeline.admin("stats")
    assert stats["injected"].get("error", 0) > 0 and stats["injected"].get("throttle", 0) > 0
    invoices = pipeline.qbo("Invoice")
    assert sorted(i["DocNumber"] for i in invoices) == sorted(f"INV-S{i}" for i in range(30))
    # every invoice is at its latest version (whether updated, or created late from the newer event)
    assert all(i["PrivateNote"].endswith("paid in full") for i in invoices)
    assert all(n == 1 for n in pipeline.writes_per_requestid().values())


def test_missing_mapping_fixed_with_ttsync_map_then_replayed_lands_once(pipeline: Pipeline) -> None:
    import subprocess
    import sys

    from kafka import KafkaProducer

    from schemas import dlq_topic, headers_to_dict
    from tests.kafka_helpers import read_topics

    with Session(pipeline.engine) as s:
        user, _, _ = base_rows(s)
        new_expense(s, user, category="Equipment Rental", status="approved")
        s.commit()
    pipeline.relay()
    pipeline.consume_until(lambda st: st.dead_lettered >= 1)
    assert pipeline.qbo("Purchase") == []
    fix = subprocess.run([sys.executable, "-m", "ttsync", "map", "set", "expense-account", "equipment rental",
                          "Office Supplies"], env=pipeline.env(), capture_output=True, text=True, timeout=60)
    assert fix.returncode == 0, fix.stderr
    dead = read_topics(pipeline.bootstrap, [dlq_topic(pipeline.prefix)], until=lambda r: len(r) >= 1)[0]
    original = headers_to_dict(dead.headers)["ttsync.errors.original.topic"]
    producer = KafkaProducer(bootstrap_servers=pipeline.bootstrap)
    for _ in range(2):  # replaying twice adds nothing the second time
        producer.send(original, key=dead.key, value=dead.value, headers=list(dead.headers)).get(10)
    producer.close()
    pipeline.consume_until(lambda st: st.applied + st.duplicates >= 2)
    purchases = pipeline.qbo("Purchase")
    office = next(a for a in pipeline.qbo("Account") if a["Name"] == "Office Supplies")
    assert len(purchases) == 1
    assert purchases[0]["Line"][0]["AccountBasedExpenseLineDetail"]["AccountRef"]["value"] == office["Id"]


@pytest.mark.slow
def test_two_consumers_in_one_group_share_partitions_and_apply_each_event_once(pipeline: Pipeline) -> None:
    import threading

    _invoices(pipeline, 24, prefix="INV-G")
    workers = [pipeline.consumer(), pipeline.consumer()]
    threads = [threading.Thread(target=w.run, kwargs={"max_seconds": 90,
                                                       "until": lambda s: len(pipeline.qbo("Invoice")) >= 24})
               for w in workers]
    for t in threads:
        t.start()
    # Both members own partitions before the first event arrives: otherwise the first to join may apply the
    # whole stream (through the batch endpoint, in a second) before the second is in the group.
    invoice_topic = f"{pipeline.prefix}.invoice"
    wait_until(lambda: all(any(tp.topic == invoice_topic for tp in w.port.assignment()) for w in workers), 60,
               "both consumers to own invoice partitions")
    pipeline.relay()
    for t in threads:
        t.join(120)
    for w in workers:
        w.close()
    assert sorted(i["DocNumber"] for i in pipeline.qbo("Invoice")) == sorted(f"INV-G{i}" for i in range(24))
    assert all(w.stats.applied + w.stats.duplicates > 0 for w in workers)  # both took part
    assert all(n == 1 for n in pipeline.writes_per_requestid().values())


@pytest.mark.slow
def test_sigterm_mid_run_loses_nothing(pipeline: Pipeline) -> None:
    import signal

    from tests.pipeline import wait_until

    pipeline.admin("config", {"latency_ms": 40})
    _invoices(pipeline, 20, prefix="INV-T")
    pipeline.relay()
    proc = pipeline.consume_process()
    wait_until(lambda: len(pipeline.qbo("Invoice")) >= 3, 60, "the consumer to start applying")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0  # finished the event in hand, committed, exited cleanly
    assert len(pipeline.qbo("Invoice")) < 20
    pipeline.admin("config", {"latency_ms": 0})
    pipeline.consume_until(lambda s: len(pipeline.qbo("Invoice")) >= 20, timeout_s=90)
    assert sorted(i["DocNumber"] for i in pipeline.qbo("Invoice")) == sorted(f"INV-T{i}" for i in range(20))


def _api_requests(pipeline: Pipeline) -> list[dict]:
    return [r for r in pipeline.admin("requests?limit=100000")["requests"] if r["path"].startswith("/v3/")]


@pytest.mark.slow
def test_a_backlog_goes_through_the_batch_endpoint(pipeline: Pipeline) -> None:
    _invoices(pipeline, 60, prefix="INV-B")
    pipeline.relay()
    pipeline.consume_until(lambda s: len(pipeline.qbo("Invoice")) >= 60, timeout_s=120,
                           consumer_max_poll_records=500)
    docs = sorted(i["DocNumber"] for i in pipeline.qbo("Invoice"))
    assert docs == sorted(f"INV-B{i}" for i in range(60))
    requests_made = _api_requests(pipeline)
    batches = [r for r in requests_made if r["path"].endswith("/batch")]
    assert batches, "a backlog should use the batch endpoint"
    assert len(requests_made) < 60  # fewer QBO requests than events


@pytest.mark.slow
def test_a_faulty_batch_item_is_dead_lettered_alone(pipeline: Pipeline) -> None:
    from tests.sandbox.client import QboTestClient

    token = pipeline.admin("tokens", {"realm_id": "9130000000000001"})["refresh_token"]
    qbo = QboTestClient(pipeline.sandbox.url, pipeline.sandbox.token_url, "9130000000000001", "ttsync-local",
                        "ttsync-local-secret", token)
    other = qbo.create("customer", {"DisplayName": "Somebody Else"})
    item = qbo.query("SELECT * FROM Item WHERE Name = 'Services'").json()["QueryResponse"]["Item"][0]["Id"]
    qbo.create("invoice", {"CustomerRef": {"value": other["Id"]}, "DocNumber": "INV-C7",
                           "Line": [{"DetailType": "SalesItemLineDetail", "Amount": 1,
                                     "SalesItemLineDetail": {"ItemRef": {"value": item}}}]})
    _invoices(pipeline, 30, prefix="INV-C")  # INV-C7 collides with somebody else's invoice: Fault 6140
    pipeline.relay()
    stats = pipeline.consume_until(lambda s: s.dead_lettered >= 1 and len(pipeline.qbo("Invoice")) >= 30,
                                   timeout_s=120, consumer_max_poll_records=500)
    mine = [i for i in pipeline.qbo("Invoice") if i["CustomerRef"]["value"] != other["Id"]]
    assert sorted(i["DocNumber"] for i in mine) == sorted(f"INV-C{i}" for i in range(30) if i != 7)
    assert stats.dead_lettered == 1


@pytest.mark.slow
def test_a_batch_whose_answer_is_lost_is_recovered_without_duplicates(pipeline: Pipeline) -> None:
    import threading
    import time as _time

    pipeline.admin("config", {"timeout_rate": 1.0, "timeout_hang_s": 1.0, "timeout_after_apply": True})
    threading.Thread(target=lambda: (_time.sleep(4), pipeline.admin("config", {"timeout_rate": 0.0})),
                     daemon=True).start()
    _invoices(pipeline, 40, prefix="INV-L")
    pipeline.relay()
    pipeline.consume_until(lambda s: len(pipeline.qbo("Invoice")) >= 40 and s.applied >= 41, timeout_s=150,
                           consumer_max_poll_records=500, qbo_timeout_s=0.5)
    docs = sorted(i["DocNumber"] for i in pipeline.qbo("Invoice"))
    assert docs == sorted(f"INV-L{i}" for i in range(40))  # each once, although answers were lost
    assert pipeline.admin("stats")["injected"]["timeout"] > 0
    assert len(pipeline.qbo("Customer")) == 1


def test_a_paused_partition_is_fetched_again_after_its_resume(kafka_bootstrap: str, topic_prefix: str) -> None:
    """What a retry topic does with a record not due yet: pause, seek back, resume later. kafka-python 3.0.12
    parks the paused partition's in-line records and, once another partition's batch was read in between,
    never hands them back nor fetches the partition again; release_parked_records undoes that."""
    import time

    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from consumer.kafka_port import release_parked_records
    from producer.kafka_publisher import ensure_topics

    waiting, other = f"{topic_prefix}.payment.retry.60s", f"{topic_prefix}.invoice"
    ensure_topics(kafka_bootstrap, [waiting, other], 1, 1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for i in range(50):
        producer.send(waiting, b"due later %d" % i)
    producer.flush()
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None, enable_auto_commit=False,
                             max_poll_records=5, auto_offset_reset="earliest")
    tp, tp_other = TopicPartition(waiting, 0), TopicPartition(other, 0)
    try:
        consumer.assign([tp, tp_other])
        first: dict = {}
        deadline = time.monotonic() + 30
        while not first and time.monotonic() < deadline:
            first = consumer.poll(500)
        assert list(first) == [tp] and len(first[tp]) == 5  # 45 more stay in line
        consumer.pause(tp)
        consumer.seek(tp, 0)
        for i in range(3):
            producer.send(other, b"meanwhile %d" % i)
        producer.flush()
        seen_other = 0
        deadline = time.monotonic() + 30
        while seen_other < 3 and time.monotonic() < deadline:
            seen_other += sum(len(v) for v in consumer.poll(200).values())
        assert seen_other == 3
        consumer.resume(tp)
        got = 0
        deadline = time.monotonic() + 20
        while got < 50 and time.monotonic() < deadline:
            release_parked_records(consumer)  # as KafkaPythonConsumer.poll does before every poll
            got += len(consumer.poll(200).get(tp, []))
        assert got == 50, f"the resumed partition gave {got} of its 50 records"
    finally:
        consumer.close()
        producer.close()


def test_a_retry_record_with_a_malformed_header_is_dead_lettered_and_the_consumer_goes_on(
        pipeline: Pipeline) -> None:
    """Poison in a header once crashed the consumer on every restart (a bad ttsync.retry.due.at)."""
    from kafka import KafkaProducer

    from schemas import Header, dlq_topic, headers_to_dict, retry_topic, topic_for
    from tests.kafka_helpers import read_topics

    with Session(pipeline.engine) as s:
        user, client, project = base_rows(s)
        new_invoice(s, user, client, project, number="INV-HDR", items=1, status="sent")
        s.commit()
    pipeline.relay()
    (good,) = read_topics(pipeline.bootstrap, [topic_for("invoice", pipeline.prefix)], until=lambda r: len(r) >= 1)
    producer = KafkaProducer(bootstrap_servers=pipeline.bootstrap)
    retry = retry_topic(topic_for("invoice", pipeline.prefix), pipeline.settings().retry_topic_delays_s[0])
    for name, value in ((Header.RETRY_DUE_AT, b"not a time"), (Header.ATTEMPTS, b"\xff\xfe"),
                        (Header.REPLAY_COUNT, b"-1")):
        producer.send(retry, key=good.key, value=good.value, headers=[(name, value)]).get(10)
    producer.close()
    pipeline.consume_until(lambda s: s.dead_lettered >= 3 and len(pipeline.qbo("Invoice")) == 1, timeout_s=60)
    dlq = read_topics(pipeline.bootstrap, [dlq_topic(pipeline.prefix)], until=lambda r: len(r) >= 3)
    assert {headers_to_dict(r.headers)["ttsync.errors.code"] for r in dlq} == {"malformed_header"}


def test_a_token_endpoint_outage_pauses_the_consumer_and_dead_letters_nothing(pipeline: Pipeline) -> None:
    """A token endpoint answering 200 with an HTML page once dead-lettered every event. Now the consumer sees
    record after record fail alike, pauses (forwards no more), and when the endpoint is back applies them all."""
    _invoices(pipeline, 8, prefix="INV-OUT")
    pipeline.relay()
    pipeline.admin("config", {"token_outage_page": True})
    worker = pipeline.consumer(consumer_outage_records=3, retry_inplace_attempts=1, retry_backoff_s=0.05)
    try:
        stats = worker.run(until=lambda s: s.outages >= 1 and s.retried_in_place >= 8, max_seconds=60)
        assert stats.outages == 1 and stats.dead_lettered == 0 and stats.applied == 0
        # Before the breaker opened at most the first records moved on to a retry topic; the rest stay put.
        assert stats.forwarded_to_retry <= 3
        pipeline.admin("config", {"token_outage_page": False})
        stats = worker.run(until=lambda s: s.applied >= 9, max_seconds=90)  # client + 8 invoices
    finally:
        worker.close()
    assert stats.dead_lettered == 0
    assert sorted(i["DocNumber"] for i in pipeline.qbo("Invoice")) == [f"INV-OUT{n}" for n in range(8)]


def test_an_outage_that_outlasts_the_pause_stops_the_consumer_for_its_supervisor(pipeline: Pipeline) -> None:
    from consumer.errors import ConsumerStuck

    _invoices(pipeline, 6, prefix="INV-STOP")
    pipeline.relay()
    pipeline.admin("config", {"token_outage_page": True})
    worker = pipeline.consumer(consumer_outage_records=3, consumer_outage_exit_s=2, retry_inplace_attempts=1,
                               retry_backoff_s=0.05)
    try:
        with pytest.raises(ConsumerStuck, match="token_endpoint_unavailable"):
            worker.run(max_seconds=60)
        assert worker.stats.dead_lettered == 0
    finally:
        worker.close()


def test_a_consumer_never_creates_the_topic_it_reads(kafka_bootstrap: str, topic_prefix: str) -> None:
    """The demo deleted its import topics at its end and they came back: the importer's consumer, subscribed to
    them, asked for their metadata, and kafka-python 3.0.12 asks the broker to create what it asks about, whatever
    ``allow_auto_create_topics`` says. The local broker creates topics on demand, as Kafka does by default."""
    import time

    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from schemas.kafka_client import open_consumer

    topic = f"{topic_prefix}.qbo.changes"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    consumer = open_consumer(kafka_bootstrap, group_id=f"{topic_prefix}-probe", metadata_max_age_ms=300)
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
        consumer.subscribe([topic])
        for _ in range(10):
            consumer.poll(200)
        admin.delete_topics([topic])
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:  # fetch errors and metadata refreshes, several times over
            consumer.poll(200)
        assert topic not in admin.list_topics()
    finally:
        consumer.close()
        if topic in admin.list_topics():
            admin.delete_topics([topic])
        admin.close()


def consumer_port(client: str, bootstrap: str, *, group_id: str, max_poll_records: int) -> ConsumerPort:
    """A ``ConsumerPort`` on ``client`` (kafka-python or confluent), not yet subscribed."""
    from schemas.kafka_client import KafkaConnection

    options = {"group_id": group_id, "client_id": f"{group_id}-test", "max_poll_records": max_poll_records,
               "session_timeout_ms": 10_000}
    if client == "confluent":
        from consumer.librdkafka_port import LibrdkafkaConsumer

        return LibrdkafkaConsumer(KafkaConnection(bootstrap), **options)  # type: ignore[arg-type]
    return KafkaPythonConsumer(KafkaConnection(bootstrap), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_a_renewed_member_reads_on_from_the_committed_offsets(kafka_bootstrap: str, topic_prefix: str,
                                                             client: str) -> None:
    """#21: a member the client stopped serving is replaced in place (``ConsumerPort.renew_membership``): the fresh
    client rejoins the group and reads from the committed offset, so what the old one fetched beyond it comes
    again and nothing after it is skipped."""
    import time
    import uuid

    from kafka import KafkaProducer

    from consumer.kafka_port import Partition
    from producer.kafka_publisher import ensure_topics

    topic = f"{topic_prefix}.invoice"
    ensure_topics(kafka_bootstrap, [topic], 1, 1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for i in range(10):
        producer.send(topic, b"record %d" % i)
    producer.flush()
    producer.close()
    port = consumer_port(client, kafka_bootstrap, group_id=f"renew-{uuid.uuid4().hex[:8]}", max_poll_records=10)
    tp = Partition(topic, 0)

    def read(count: int) -> list[int]:
        offsets: list[int] = []
        deadline = time.monotonic() + 60
        while len(offsets) < count and time.monotonic() < deadline:
            offsets += [r.offset for r in port.poll(timeout_ms=500).get(tp, [])]
        return offsets

    try:
        port.subscribe([topic])
        first = read(10)
        assert first == list(range(10))
        port.commit(tp, 4)  # 0..3 done; 4..9 fetched, never settled
        port.renew_membership()
        assert read(6) == list(range(4, 10))
        port.commit(tp, 10)
    finally:
        port.close()


def test_consumers_drawing_at_once_never_take_more_than_the_realms_shared_budget(pg_engine: Any) -> None:
    """The realm's budget is a row every consumer draws from; each take is one statement in autocommit, which
    refills and takes under the row's lock. Two consumers drawing at once take exactly what it holds."""
    import threading

    from consumer.rate_limit import SharedTokenBucket

    buckets = [SharedTokenBucket(pg_engine, "realm-shared", rate_per_s=0.0001, capacity=25) for _ in range(2)]
    taken: list[int] = []
    start = threading.Barrier(len(buckets))

    def draw(bucket: SharedTokenBucket) -> None:
        start.wait()
        taken.append(sum(bucket.try_acquire() for _ in range(40)))

    threads = [threading.Thread(target=draw, args=(b,)) for b in buckets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(taken) == 2 and sum(taken) == 25, taken
    assert buckets[0]._take() > 1  # empty: the next token is far off at this rate


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_the_fetch_watchdogs_offsets_of_sixty_partitions_come_in_seconds_and_right(
        kafka_bootstrap: str, topic_prefix: str, client: str) -> None:
    """The fetch watchdog asks a quiet member for the end offset and position of every partition it owns (60 with
    the default topics). On librdkafka each partition was one request, each waiting behind the member's 500 ms
    long-poll fetch: 30 s for the end offsets and as long again for the positions, every quiet spell, with the
    consumer polling nothing and a SIGTERM waiting (the chaos suite's consumer was killed after its grace). The
    bound is a hang's, not a speed target: the answers come in one request per kind."""
    import time
    import uuid

    from kafka import KafkaProducer

    from consumer.kafka_port import Partition
    from producer.kafka_publisher import ensure_topics

    topics = [f"{topic_prefix}.quiet{n}" for n in range(20)]
    ensure_topics(kafka_bootstrap, topics, 3, 1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    written: dict[Partition, int] = {}
    for n, topic in enumerate(topics[:5]):
        for i in range(n + 2):
            producer.send(topic, b"record %d" % i, partition=n % 3)
        written[Partition(topic, n % 3)] = n + 2
    producer.flush()
    producer.close()
    port = consumer_port(client, kafka_bootstrap, group_id=f"quiet-{uuid.uuid4().hex[:8]}", max_poll_records=500)
    try:
        port.subscribe(topics)
        read: dict[Partition, int] = {}
        deadline = time.monotonic() + 60
        while (len(port.assignment()) < 60 or read != written) and time.monotonic() < deadline:
            for tp, records in port.poll(timeout_ms=250).items():
                read[tp] = read.get(tp, 0) + len(records)
        assert read == written and len(port.assignment()) == 60
        first = next(iter(written))
        port.commit(first, 1)
        port.seek(first, 1)  # read again from the committed offset
        owned = sorted(port.assignment())
        started = time.monotonic()
        ends, positions = port.end_offsets(owned), port.positions(owned)
        took = time.monotonic() - started
        assert ends == {tp: written.get(tp, 0) for tp in owned}
        assert positions == {**{tp: written.get(tp, 0) for tp in owned}, first: 1}
        assert took < 5, f"the offsets of 60 partitions took {took:.1f} s"
    finally:
        port.close()
