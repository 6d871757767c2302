"""Two TimeTracker databases on one PostgreSQL server, a relay each: neither takes the other's relay for a
peer (advisory locks are per database, pg_locks is per server), so both drain; and a stopped relay makes
`ttsync outbox status --check` fail instead of staying green while the backlog ages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, func, select, text, update

from producer.database import scratch_database
from producer.outbox_relay import OutboxRelay
from producer.outbox_tables import outbox
from producer.relay_buckets import BucketLeases
from tests.conftest import prepare_timetracker_db
from tests.fakes import StubPublisher
from tests.integration.test_relay_kafka import backlog, seed_outbox

pytestmark = pytest.mark.integration


@pytest.fixture
def second_engine(pg_server_url: str) -> Iterator[Engine]:
    with scratch_database(pg_server_url, "t2_") as url:
        engine = prepare_timetracker_db(url)
        yield engine
        engine.dispose()


def test_a_relay_on_another_database_of_the_server_is_no_peer(pg_engine: Engine, second_engine: Engine) -> None:
    a, b = BucketLeases(pg_engine, 16), BucketLeases(second_engine, 16)
    try:
        assert len(a.refresh(rebalance=False, force=True)) == 16
        assert len(b.refresh(rebalance=True, force=True)) == 16 and b.live_relays == 1
    finally:
        a.close()
        b.close()


def test_two_databases_one_relay_each_both_drain(pg_engine: Engine, second_engine: Engine) -> None:
    seed_outbox(pg_engine, 200, 50)
    seed_outbox(second_engine, 200, 50)
    relays = [OutboxRelay(engine, StubPublisher()) for engine in (pg_engine, second_engine)]
    threads = [threading.Thread(target=r.run, kwargs={"max_seconds": 60}, daemon=True) for r in relays]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while (backlog(pg_engine) or backlog(second_engine)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (backlog(pg_engine), backlog(second_engine)) == (0, 0)
    finally:
        for r in relays:
            r.stop()
        for t in threads:
            t.join(30)


def test_outbox_status_check_fails_when_the_oldest_unpublished_row_is_too_old(pg_engine: Engine,
                                                                             pg_database: str) -> None:
    seed_outbox(pg_engine, 3, 3)
    env = {**os.environ, "TTSYNC_DATABASE_URL": pg_database, "TTSYNC_LOG_FORMAT": "json"}

    def status(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ttsync", "outbox", "status", "--check", "--json", *args],
                              env=env, capture_output=True, text=True, timeout=60)

    fresh = status()
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr  # a young backlog: a relay may be on it
    with pg_engine.begin() as conn:  # nobody relayed for ten minutes
        conn.execute(update(outbox).values(occurred_at=func.now() - func.make_interval(0, 0, 0, 0, 0, 10)))
    stale = status()
    assert stale.returncode == 1
    report = json.loads(stale.stdout)
    assert report["oldest_unpublished_age_seconds"] >= 590 and "relay" in report["problems"][0]
    assert status("--max-age", "3600").returncode == 0
    with pg_engine.connect() as conn:
        assert conn.execute(select(func.count()).where(outbox.c.published_at.is_(None))).scalar_one() == 3


def test_unpublished_rows_are_purged_only_once_the_replication_slot_confirmed_them(pg_engine: Engine) -> None:
    """Each round: a fresh slot, rows written after it, a purge that must wait for the slot. The WAL position a
    purge compares with must cover every committed row: the write position (pg_current_wal_lsn) moves in whole
    pages and could sit before a slot made moments earlier, which then seemed to confirm rows it never read (one
    round in eight, before the fix; eight rounds catch it nearly always)."""
    import datetime as dt
    import uuid

    from producer.outbox_status import PurgeRefused, drop_replication_slot, purge

    for _ in range(8):
        slot = f"t_{uuid.uuid4().hex[:10]}"
        with pg_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("SELECT pg_create_logical_replication_slot(:s, 'test_decoding')"), {"s": slot})
        try:
            seed_outbox(pg_engine, 4, 4)  # after the cut-over: never published, the Debezium relay marks nothing
            with pg_engine.begin() as conn:
                conn.execute(update(outbox).values(occurred_at=func.now() - func.make_interval(0, 0, 0, 0, 100)))
            with pytest.raises(PurgeRefused, match="no replication slot"):
                purge(pg_engine, dt.timedelta(hours=72), slot="nobody")
            with pytest.raises(PurgeRefused, match="not confirmed"):  # it has not streamed those rows yet
                purge(pg_engine, dt.timedelta(hours=72), slot=slot, confirm_timeout_s=0.2)
            assert backlog(pg_engine) == 4
            streaming = threading.Event()

            def confirm_as_debezium_does(name: str = slot, done: threading.Event = streaming) -> None:
                """Confirms what it read, again and again; its heartbeat keeps WAL moving on an idle database
                (Debezium's heartbeat.action.query), so the slot can pass a position at a page boundary."""
                with pg_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    while not done.wait(0.05):
                        conn.execute(text("SELECT txid_current()"))  # a commit: WAL written and flushed
                        conn.execute(text("SELECT pg_replication_slot_advance(:s, pg_current_wal_flush_lsn())"),
                                     {"s": name})

            debezium = threading.Thread(target=confirm_as_debezium_does, daemon=True)
            debezium.start()
            try:
                assert purge(pg_engine, dt.timedelta(hours=72), slot=slot, confirm_timeout_s=10) == 4
            finally:
                streaming.set()
                debezium.join(10)
            assert backlog(pg_engine) == 0
        finally:
            assert drop_replication_slot(pg_engine, slot)
