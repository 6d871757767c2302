"""The scale-out path under the same invariant: the outbox relayed by Debezium through Kafka Connect.

TimeTracker changes are captured by our triggers, relayed first by `ttsync relay`, then - after the cut-over
the README describes - by Debezium's PostgreSQL connector and Outbox Event Router in a real Kafka Connect worker
(deploy/local/connect.sh), and applied by our unchanged consumer. Mid-stream the worker is killed -9 and
started again. Every change must be in QBO exactly once at its latest version, and every outbox event in Kafka.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from importer.transactions import marked_as_import
from producer import cdc_role
from producer.outbox_status import drop_replication_slot, replication_slot
from schemas.codec import headers_to_dict
from schemas.contract import ORIGIN_QBO_IMPORT, Header, topic_for
from tests.chaos.conftest import MakeRun
from tests.chaos.harness import changes_per_scenario
from tests.chaos.report import record
from tests.chaos.test_chaos import running, wait_progress
from tests.chaos.workload import Workload
from tests.kafka_helpers import read_topics

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CONNECT = REPO / "deploy" / "local" / "connect.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ConnectWorker:
    def __init__(self, bootstrap: str, state_dir: Path) -> None:
        port = _free_port()
        self.env = {**os.environ, "CONNECT_PORT": str(port), "KAFKA_BOOTSTRAP": bootstrap,
                    "CONNECT_STATE_DIR": str(state_dir), "CONNECT_GROUP": f"ttsync-connect-test-{uuid.uuid4().hex[:8]}"}
        self.state_dir = state_dir

    def run(self, *args: str, **env: str) -> str:
        done = subprocess.run(["bash", str(CONNECT), *args], env={**self.env, **env}, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, f"connect.sh {' '.join(args)} failed:\n{done.stdout}\n{done.stderr[-4000:]}"
        return done.stdout

    def kill9(self) -> None:
        pid = int((self.state_dir / "worker.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.2)


@pytest.fixture(scope="module")
def connect_worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConnectWorker]:
    worker = ConnectWorker(kafka_bootstrap, tmp_path_factory.mktemp("connect"))
    worker.run("start")  # fetches the jars on first use (Maven Central), then a few seconds
    try:
        yield worker
    finally:
        worker.run("stop")


def test_debezium_takes_over_from_the_relay_and_survives_a_kill_9_of_kafka_connect(
        make_run: MakeRun, connect_worker: ConnectWorker) -> None:
    started = time.monotonic()
    with make_run("Debezium relay: cut-over, Connect kill -9") as run:
        slot = f"ttsync_{uuid.uuid4().hex[:10]}"
        connector = f"ttsync-outbox-{slot}"
        # Debezium logs in as a least-privilege role (REPLICATION, SELECT on the outbox), with the publication
        # made by the table's owner: what `ttsync outbox cdc-role` sets up.
        role, password = f"cdc_{slot}", uuid.uuid4().hex
        with run.pipe.engine.begin() as conn:
            cdc_role.apply(conn, role, password, slot)
        env = {"TTSYNC_DATABASE_URL": cdc_role.role_url(run.pipe.db_url, role, password),
               "TTSYNC_TOPIC_PREFIX": run.pipe.prefix, "DEBEZIUM_SLOT": slot, "DEBEZIUM_CONNECTOR": connector,
               "DEBEZIUM_PUBLICATION_EXISTS": "1"}
        relay = run.relay()
        run.consumer()
        workload = Workload(run.pipe.engine, changes=changes_per_scenario(), tag="dbz", pace_s=0.02).start()
        try:
            # 1. Cut-over: Debezium starts streaming from its new slot while `ttsync relay` still runs; the relay
            #    leaves once it has published everything committed before the slot existed. The overlap is
            #    published twice (same event id): the consumer's dedupe makes that harmless.
            wait_progress(workload, 0.2)
            connect_worker.run("register", **env)
            run.debezium_slot = slot
            deadline = time.monotonic() + 60
            while not (replication_slot(run.pipe.engine, slot) or {}).get("active"):
                assert time.monotonic() < deadline, "Debezium never took its replication slot"
                time.sleep(0.2)
            with run.pipe.engine.connect() as conn:
                cutoff = conn.execute(text("SELECT COALESCE(MAX(seq), 0) FROM ttsync_outbox")).scalar_one()
            deadline = time.monotonic() + 120
            while True:
                with run.pipe.engine.connect() as conn:
                    waiting = conn.execute(text("SELECT COUNT(*) FROM ttsync_outbox WHERE published_at IS NULL "
                                                "AND seq <= :c"), {"c": cutoff}).scalar_one()
                if waiting == 0:
                    break
                assert time.monotonic() < deadline, f"the relay left {waiting} rows from before the cut-over"
                time.sleep(0.2)
            relay.retire()
            assert running(workload), "the workload ended before the cut-over: nothing left for Debezium"

            # 2. Kafka Connect killed -9 mid-stream, then started again: the connector resumes from its offsets.
            wait_progress(workload, 0.6)
            connect_worker.kill9()
            time.sleep(2)
            connect_worker.run("start")
            workload.join(600)
            # 3. A change the importer made (a QBO edit applied to TimeTracker) reaches Kafka through Debezium
            #    with its origin, so that the export consumer does not send it back (the import direction's echo).
            with run.pipe.engine.begin() as conn:
                marked_as_import(conn)
                conn.execute(text("UPDATE clients SET phone = '+1 555 0199' WHERE id = (SELECT MIN(id) FROM clients)"))
                # The last outbox row is written at this commit (a deferred trigger), after this position. Debezium
                # confirms only the positions of the outbox's own commits (its heartbeats repeat the last one), so
                # a position taken after the commit, past WAL the consumer writes meanwhile, is never reached.
                run.wal_target = str(conn.execute(text("SELECT pg_current_wal_insert_lsn()")).scalar_one())
            with run.pipe.engine.connect() as conn:
                imported = str(conn.execute(text("SELECT id FROM ttsync_outbox WHERE origin = :o ORDER BY seq DESC "
                                                 "LIMIT 1"), {"o": ORIGIN_QBO_IMPORT}).scalar_one())

            verdict = run.converge(timeout_s=300)
            details = "\n".join(verdict.problems) + "\n" + run.diagnostics()
            assert verdict.ok, f"{verdict.lost} lost, {verdict.duplicated} duplicated\n{details}"
            with run.pipe.engine.connect() as conn:
                ids = {str(r[0]) for r in conn.execute(text("SELECT id FROM ttsync_outbox"))}
                after_cutover = conn.execute(text("SELECT COUNT(*) FROM ttsync_outbox WHERE published_at IS NULL")
                                             ).scalar_one()
            topics = [topic_for(t, run.pipe.prefix) for t in ("invoice", "expense", "payment", "client")]
            records = read_topics(run.pipe.bootstrap, topics, until=lambda r: len(
                {headers_to_dict(x.headers).get("id") for x in r}) >= len(ids), timeout_s=60)
            in_kafka = {headers_to_dict(x.headers).get("id") for x in records}
            assert ids <= in_kafka, f"{len(ids - in_kafka)} outbox events never reached Kafka"
            echoes = [headers_to_dict(x.headers) for x in records if headers_to_dict(x.headers).get("id") == imported]
            assert echoes and all(h.get(Header.ORIGIN) == ORIGIN_QBO_IMPORT for h in echoes), echoes
            assert after_cutover > changes_per_scenario() // 10, "Debezium relayed too little to prove anything"
            record(run.scenario, verdict, time.monotonic() - started,
                   f"cut-over at 20%, Connect kill -9 at 60%; {after_cutover} events by Debezium only",
                   sum(p.restarts for p in run.procs), storage=run.storage, brokers=run.brokers)
        finally:
            subprocess.run(["bash", str(CONNECT), "unregister"], env={**connect_worker.env, **env},
                           capture_output=True, timeout=60)
            # The scratch database cannot be dropped while a replication slot points at it.
            assert drop_replication_slot(run.pipe.engine, slot), f"slot {slot} still held by Kafka Connect"
            with run.pipe.engine.begin() as conn:  # roles are the server's: leave none behind
                conn.execute(text(f'DROP OWNED BY "{role}"'))
                conn.execute(text(f'DROP ROLE "{role}"'))

