"""The relay against a real PostgreSQL and a real Kafka broker."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.orm import Session

from producer.kafka_publisher import KafkaRecordPublisher, RecordPublisher, ensure_topics
from producer.outbox_relay import OutboxRelay
from producer.outbox_tables import outbox
from producer.outbox_writer import write_event
from producer.timetracker_schema import Invoice
from producer.trigger_capture import install_triggers
from schemas import all_topics, decode_event, headers_to_dict, topic_for
from schemas.kafka_client import OutRecord
from tests.fakes import StubPublisher
from tests.kafka_helpers import read_topics, topic_configs
from tests.pipeline import wait_until
from tests.services import private_broker
from tests.timetracker_data import base_rows, new_invoice
from tests.unit.test_relay_sqlite import test_failed_record_holds_back_its_aggregate_only as _refused_rows
from tests.unit.test_relay_sqlite import test_whole_batch_refused_raises_and_marks_nothing_published as _all_refused

pytestmark = pytest.mark.integration


def test_a_refused_row_is_unmarked_and_holds_back_its_aggregate_on_postgres(pg_engine: Engine) -> None:
    """PostgreSQL marks rows published as it claims them: the ones the broker refused must be unmarked before
    the commit (the same rules as on SQLite, where claiming and marking are two statements)."""
    _refused_rows(pg_engine)


def test_a_wholly_refused_batch_leaves_every_row_unpublished_on_postgres(pg_engine: Engine) -> None:
    _all_refused(pg_engine)


def outbox_ids(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {str(i) for i in conn.execute(select(outbox.c.id)).scalars()}


def backlog(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).where(outbox.c.published_at.is_(None))).scalar_one()


def seed_outbox(engine: Engine, n: int, aggregates: int) -> None:
    with engine.begin() as conn:
        for i in range(n):
            agg = str(i % aggregates + 1)
            write_event(conn, aggregate_type="client", aggregate_id=agg, action="updated",
                        payload={"id": int(agg), "name": f"Client {agg} rev {i}"}, source="test")


def test_committed_change_gives_exactly_one_record(pg_engine: Engine, kafka_bootstrap: str,
                                                   topic_prefix: str) -> None:
    with pg_engine.begin() as conn:
        install_triggers(conn)
    with Session(pg_engine) as s:
        user, client, project = base_rows(s)
        inv = new_invoice(s, user, client, project, number="INV-1", items=3)
        s.commit()
        invoice_id = inv.id
    with Session(pg_engine) as s:  # rolled back: must not reach Kafka
        s.get_one(Invoice, invoice_id).status = "cancelled"
        s.flush()
        s.rollback()

    publisher = KafkaRecordPublisher(kafka_bootstrap)
    stats = OutboxRelay(pg_engine, publisher, topic_prefix=topic_prefix).run(idle_exit=True)
    publisher.close()
    assert stats.published == 2  # client.created + invoice.created

    records = read_topics(kafka_bootstrap, [topic_for("invoice", topic_prefix)], until=lambda r: len(r) >= 1)
    time.sleep(1)
    records = read_topics(kafka_bootstrap, [topic_for("invoice", topic_prefix)], idle_s=2)
    assert len(records) == 1
    rec = records[0]
    with pg_engine.connect() as conn:
        row = conn.execute(select(outbox).where(outbox.c.type == "invoice.created")).one()
    headers = headers_to_dict(rec.headers)
    assert rec.key == str(invoice_id).encode()
    assert headers["id"] == str(row.id)
    assert headers["eventType"] == "invoice.created"
    assert headers["aggregateVersion"] == "1"
    evt = decode_event(rec.value)
    assert json.loads(rec.value) == row.payload
    assert len(evt.state().items) == 3 and evt.state().status == "draft"
    assert row.published_at is not None


def publisher_of(client: str, bootstrap: str) -> RecordPublisher:
    if client == "confluent":
        from producer.librdkafka_publisher import LibrdkafkaRecordPublisher

        return LibrdkafkaRecordPublisher(bootstrap)
    return KafkaRecordPublisher(bootstrap)


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_concurrent_writers_and_two_relays_keep_order_per_aggregate(pg_engine: Engine, kafka_bootstrap: str,
                                                                   topic_prefix: str, client: str) -> None:
    """Both Kafka clients the relay can run on (TTSYNC_KAFKA_CLIENT), with the same guarantees."""
    ensure_topics(kafka_bootstrap, all_topics(topic_prefix), partitions=3, replication=1)
    with pg_engine.begin() as conn:
        install_triggers(conn)
    with Session(pg_engine) as s:
        user, client, project = base_rows(s)
        invoice_ids = [new_invoice(s, user, client, project, number=f"INV-{n}", items=2) for n in range(12)]
        s.commit()
        invoice_ids = [i.id for i in invoice_ids]

    relays = [OutboxRelay(pg_engine, publisher_of(client, kafka_bootstrap), topic_prefix=topic_prefix,
                          batch_size=50, poll_interval_s=0.2, buckets=8) for _ in range(2)]
    threads = [threading.Thread(target=r.run) for r in relays]
    for t in threads:
        t.start()

    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for n in range(40):
                with Session(pg_engine) as s:
                    inv = s.get_one(Invoice, rng.choice(invoice_ids))
                    inv.notes = f"writer {seed} change {n}"
                    inv.items[rng.randrange(2)].description = f"w{seed}-{n}"
                    s.commit()
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(120)
    assert not errors
    wait_until(lambda: backlog(pg_engine) == 0, 60, "the outbox to drain")
    for r in relays:
        r.stop()
    for t in threads:
        t.join(30)
    for r in relays:
        r.publisher.close()

    expected = outbox_ids(pg_engine)
    with pg_engine.connect() as conn:
        n_invoice = conn.execute(select(func.count()).where(outbox.c.aggregatetype == "invoice")).scalar_one()
    records = read_topics(kafka_bootstrap, [topic_for("invoice", topic_prefix), topic_for("client", topic_prefix)],
                          until=lambda r: len(r) >= len(expected), timeout_s=60)
    seen = {headers_to_dict(r.headers)["id"] for r in records}
    assert seen == expected
    assert sum(r.stats.published for r in relays) == len(expected)
    versions: dict[bytes, list[int]] = defaultdict(list)
    for rec in sorted((r for r in records if r.topic.endswith(".invoice")), key=lambda r: (r.partition, r.offset)):
        versions[rec.key].append(decode_event(rec.value).aggregate_version)
    assert sum(len(v) for v in versions.values()) == n_invoice
    for key, vs in versions.items():
        assert vs == sorted(vs) and len(set(vs)) == len(vs), f"invoice {key!r} out of order: {vs}"
        assert vs == list(range(1, len(vs) + 1)), f"invoice {key!r} has gaps: {vs}"


def _relay_process(db_url: str, bootstrap: str, prefix: str, log_path: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "TTSYNC_DATABASE_URL": db_url, "TTSYNC_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
           "TTSYNC_TOPIC_PREFIX": prefix, "TTSYNC_RELAY_BATCH_SIZE": "100", "TTSYNC_LOG_FORMAT": "json"}
    stderr = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen([sys.executable, "-m", "ttsync", "relay"], env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr)
    finally:
        if log_path is not None:
            stderr.close()


@pytest.mark.slow
def test_kill_9_of_the_relay_mid_batch_loses_nothing(pg_engine: Engine, pg_database: str, kafka_bootstrap: str,
                                                      topic_prefix: str, tmp_path: Path) -> None:
    seed_outbox(pg_engine, 4000, aggregates=50)
    total = 4000
    rng = random.Random(7)
    kills = 0
    for _ in range(3):
        proc = _relay_process(pg_database, kafka_bootstrap, topic_prefix)
        # Kill at a random moment while rows are still waiting (mid-stream, usually mid-batch).
        wait_until(lambda p=proc, t=total: backlog(pg_engine) < t or p.poll() is not None, 60, "the relay to start")
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        kills += 1
        total = backlog(pg_engine)
        if total == 0:
            break
    assert kills >= 1
    log_path = tmp_path / "relay.log"
    proc = _relay_process(pg_database, kafka_bootstrap, topic_prefix, log_path)
    try:
        wait_until(lambda: backlog(pg_engine) == 0, 120, "the outbox to drain after the kills")
        # The backlog may already be empty: SIGTERM only once the relay runs (and handles it), not mid-import.
        wait_until(lambda: b'"relay_started"' in log_path.read_bytes(), 60, "the relay to report it started")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0  # SIGTERM: finish the batch, exit cleanly

    expected = outbox_ids(pg_engine)
    records = read_topics(kafka_bootstrap, [topic_for("client", topic_prefix)],
                          until=lambda r: len({headers_to_dict(x.headers)["id"] for x in r}) >= len(expected),
                          timeout_s=90)
    by_id: dict[str, set[bytes]] = defaultdict(set)
    for rec in records:
        by_id[headers_to_dict(rec.headers)["id"]].add(rec.value)
    assert set(by_id) == expected, f"lost {len(expected - set(by_id))} events"
    # A redelivered record is the same event: same id, same bytes.
    assert all(len(values) == 1 for values in by_id.values())


@pytest.mark.slow
def test_broker_outage_of_10s_drains_afterwards(pg_engine: Engine, topic_prefix: str) -> None:
    with private_broker() as broker:
        relay = OutboxRelay(pg_engine, KafkaRecordPublisher(broker.bootstrap, timeout_s=4),
                            topic_prefix=topic_prefix, poll_interval_s=0.2)
        thread = threading.Thread(target=relay.run)
        thread.start()
        try:
            seed_outbox(pg_engine, 50, aggregates=5)
            wait_until(lambda: backlog(pg_engine) == 0, 60, "the first rows to publish")
            broker.stop()
            seed_outbox(pg_engine, 200, aggregates=5)
            time.sleep(10)
            assert backlog(pg_engine) == 200  # kept, not lost, while the broker is away
            broker.start()
            wait_until(lambda: backlog(pg_engine) == 0, 90, "the outbox to drain after the outage")
        finally:
            relay.stop()
            thread.join(60)
            relay.publisher.close()
        expected = outbox_ids(pg_engine)
        records = read_topics(broker.bootstrap, [topic_for("client", topic_prefix)],
                              until=lambda r: len({headers_to_dict(x.headers)["id"] for x in r}) >= len(expected),
                              timeout_s=60)
        assert {headers_to_dict(r.headers)["id"] for r in records} == expected
        # Whether a batch failed during the outage or waited it out in flight (a 2,000-row batch holds all 200 rows,
        # and the producer may still be waiting when the broker is back) is timing: a rehearsal saw both. Either
        # way the rows stayed unpublished while the broker was away (above), and every one arrived.
        assert relay.stats.published == 250


def test_a_relay_that_lets_go_of_its_buckets_frees_them_for_the_next_one_in_the_same_process(
        pg_engine: Engine) -> None:
    from producer.relay_buckets import BucketLeases

    first = BucketLeases(pg_engine, 16)
    assert len(first.refresh(rebalance=False, force=True)) == 16
    first.close()  # the session must end: a pooled connection would keep its advisory locks
    other_work = pg_engine.connect()  # whatever the pool hands out next belongs to someone else now
    second = BucketLeases(pg_engine, 16)
    try:
        assert len(second.refresh(rebalance=False, force=True)) == 16
    finally:
        second.close()
        other_work.close()


def test_topics_ttsync_creates_carry_their_durability_settings(kafka_bootstrap: str, topic_prefix: str) -> None:
    """#21: on a replicated cluster, acks=all means what min.insync.replicas says; ttsync sets it (and unclean leader
    election off) on every topic it creates, from its settings."""
    from schemas import dlq_topic
    from ttsync.settings import Settings
    from ttsync.wiring import ensure_consumer_topics, ensure_relay_topics

    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix,
                        topic_min_insync_replicas=1)
    ensure_relay_topics(settings)
    ensure_consumer_topics(settings)
    for topic in (topic_for("invoice", topic_prefix), dlq_topic(topic_prefix)):
        configs = topic_configs(kafka_bootstrap, topic, timeout_s=15)
        assert configs["min.insync.replicas"]["value"] == "1"
        assert configs["unclean.leader.election.enable"]["value"] == "false"
    with pytest.raises(ValueError, match="MIN_INSYNC_REPLICAS"):
        Settings(topic_replication_factor=1, topic_min_insync_replicas=2)


def _claim_plans(engine: Engine) -> list[str]:
    """The plans PostgreSQL chooses for the relay's own claim statements, as the relay runs them (same
    transaction, same parameters), captured by EXPLAIN just before each one executes."""
    plans: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def explain(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if "SKIP LOCKED" in statement:
            cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
            plans.append(json.dumps(cursor.fetchone()[0]))
    return plans


def test_a_claim_walks_the_unpublished_index_even_when_the_statistics_predate_the_backlog(
        pg_engine: Engine) -> None:
    """A backlog the planner's statistics know nothing of (a fresh install's snapshot, a burst before
    autoanalyze): with its default guess of a few hundred unpublished rows, the planner read the whole backlog
    in a bitmap scan and sorted it to keep the first batch, O(backlog) per claim (100 ms instead of 34 for 2,000
    rows out of 50,000, durable PostgreSQL 15). The claim must walk the unpublished rows in seq order and stop at
    the batch size, whatever the statistics say."""
    with pg_engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE ttsync_outbox SET (autovacuum_enabled = false)")  # no analyze midway
        conn.execute(text(
            "INSERT INTO ttsync_outbox (id, aggregatetype, aggregateid, type, payload, aggregate_version, "
            "occurred_at) SELECT gen_random_uuid(), 'client', (g % 300)::text, 'client.updated', "
            "jsonb_build_object('n', g), g / 300 + 1, now() FROM generate_series(0, 5999) g"))

    plans = _claim_plans(pg_engine)
    alone = OutboxRelay(pg_engine, StubPublisher(), batch_size=500)
    shared = OutboxRelay(pg_engine, StubPublisher(), batch_size=500)
    try:
        alone._refresh_leases(rebalance=True)  # every bucket: the claim without a bucket filter
        claimed_alone = alone._claim()
        assert claimed_alone is not None and len(claimed_alone.rows) == 500
        alone._abandon(claimed_alone)
        # A second relay joins: each holds half the buckets, and its claim filters on them.
        assert alone.leases is not None and shared.leases is not None
        shared.leases.refresh(rebalance=True, force=True)
        alone.leases.refresh(rebalance=True, force=True)
        assert len(shared.leases.refresh(rebalance=True, force=True)) == 8
        claimed_shared = shared._claim()
        assert claimed_shared is not None and len(claimed_shared.rows) == 500
        shared._abandon(claimed_shared)
    finally:
        for relay in (alone, shared):
            if relay.leases is not None:
                relay.leases.close()
    assert len(plans) == 2
    for plan in plans:
        assert "ix_ttsync_outbox_unpublished" in plan, plan
        assert "Bitmap Heap Scan" not in plan and "Seq Scan" not in plan, plan


def test_a_batch_claimed_ahead_is_given_back_when_the_batch_before_it_fails(pg_engine: Engine) -> None:
    """A full batch has the next one claimed on the claim thread while it is sent. When the broker refuses a row
    of the first, the second (holding later rows of the same aggregate) must go back unsent: sent, it would put
    client 1's later versions on Kafka before the refused one."""
    seed_outbox(pg_engine, 12, aggregates=3)  # four full batches of four, every aggregate in each
    seen = {"records": 0}

    def refuse_client_1_in_the_first_batch(rec):  # type: ignore[no-untyped-def]
        seen["records"] += 1  # the broker is back by the second batch: only the give-back keeps it from going
        refused = rec.key == b"1" and seen["records"] <= 4
        return ValueError("NotEnoughReplicas") if refused else None

    class SlowToAcknowledgeTheFirstBatch(StubPublisher):
        def wait(self, handle):  # type: ignore[no-untyped-def]
            if seen["records"] <= 4:  # the claim thread takes the next batch meanwhile, as behind a real broker
                time.sleep(0.3)  # (well within the refused rows' 1 s retry delay)
            return super().wait(handle)

    stub = SlowToAcknowledgeTheFirstBatch(refuse_client_1_in_the_first_batch)
    relay = OutboxRelay(pg_engine, stub, batch_size=4)
    try:
        assert relay.pipeline
        relay.run(idle_exit=True)
        # The others went on, once each (client 1's rows may come back too if this took over a second).
        assert sorted(r.key for r in stub.sent if r.key != b"1") == [b"2"] * 4 + [b"3"] * 4
        with pg_engine.begin() as conn:  # client 1's rows due again now
            conn.execute(outbox.update().values(available_at=func.now() - text("interval '1 second'")))
        relay.run(idle_exit=True)
    finally:
        if relay.leases is not None:
            relay.leases.close()
    versions = {key: [json.loads(r.value)["aggregate_version"] for r in stub.sent if r.key == key]
                for key in (b"1", b"2", b"3")}
    assert versions == {b"1": [1, 2, 3, 4], b"2": [1, 2, 3, 4], b"3": [1, 2, 3, 4]}  # in order, once each
    assert backlog(pg_engine) == 0


def test_librdkafka_reports_a_refused_record_at_its_place_in_the_batch(kafka_bootstrap: str,
                                                                       topic_prefix: str) -> None:
    """Delivery reports come for failed records only (relay_producer_config): a record the broker refuses is
    still found at its position, and the records around it count as acknowledged."""
    from producer.librdkafka_publisher import DeliveryFailed, LibrdkafkaRecordPublisher

    roomy, tight = f"{topic_prefix}.roomy", f"{topic_prefix}.tight"
    ensure_topics(kafka_bootstrap, [roomy], partitions=1, replication=1)
    ensure_topics(kafka_bootstrap, [tight], partitions=1, replication=1, configs={"max.message.bytes": "2048"})
    publisher = LibrdkafkaRecordPublisher(kafka_bootstrap)
    try:
        records = [OutRecord(roomy, f"k{i}".encode(), f"v{i}".encode(), [("id", str(i).encode())]) for i in range(6)]
        records.insert(3, OutRecord(tight, b"big", b"x" * 10_000, [("id", b"big")]))
        results = publisher.wait(publisher.send(records))
        assert [i for i, r in enumerate(results) if r is not None] == [3], results
        assert isinstance(results[3], DeliveryFailed) and "large" in str(results[3]).lower(), results[3]

        # The producer goes on: a batch after a refusal is acknowledged whole.
        assert publisher.wait(publisher.send(records[:3])) == [None, None, None]
    finally:
        publisher.close()
    got = read_topics(kafka_bootstrap, [roomy], until=lambda r: len(r) >= 9, timeout_s=30)
    assert sorted(r.value for r in got) == sorted([f"v{i}".encode() for i in range(6)] + [b"v0", b"v1", b"v2"])
