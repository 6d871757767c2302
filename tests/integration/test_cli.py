"""The ttsync CLI as an operator or a script uses it: exit codes, --json, --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def ttsync(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ttsync", *args], capture_output=True, text=True,
                          env={**os.environ, "TTSYNC_LOG_FORMAT": "json", **(env or {})}, timeout=timeout,
                          check=False)


@pytest.mark.parametrize("command", [[], ["doctor"], ["db", "upgrade"], ["capture", "install"], ["relay"],
                                     ["outbox", "status"], ["outbox", "purge"], ["schemas", "export"],
                                     ["capture", "snapshot"], ["reconcile"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = ttsync(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_db_upgrade_then_outbox_status_json_on_sqlite(tmp_path: Path) -> None:
    env = {"TTSYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'tt.sqlite3'}"}
    up = ttsync("db", "upgrade", "--timetracker-schema", "--json", env=env)
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["revision"] == json.loads(up.stdout)["head"]
    cur = ttsync("db", "current", "--json", env=env)
    assert cur.returncode == 0 and json.loads(cur.stdout)["up_to_date"] is True
    status = ttsync("outbox", "status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["backlog"] == 0


def test_capture_install_on_sqlite_is_a_clear_error(tmp_path: Path) -> None:
    env = {"TTSYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'tt.sqlite3'}"}
    ttsync("db", "upgrade", "--timetracker-schema", env=env)
    result = ttsync("capture", "install", env=env)
    assert result.returncode == 1
    assert "needs PostgreSQL" in result.stdout + result.stderr


def test_capture_install_status_uninstall_on_postgres(pg_database: str) -> None:
    env = {"TTSYNC_DATABASE_URL": pg_database}
    assert ttsync("db", "upgrade", "--timetracker-schema", env=env).returncode == 0
    installed = ttsync("capture", "install", "--json", env=env)
    assert installed.returncode == 0, installed.stderr
    assert json.loads(installed.stdout)["tables"] == ["clients", "expenses", "extra_goods", "invoice_items",
                                                      "invoices", "payments"]
    assert len(json.loads(ttsync("capture", "status", "--json", env=env).stdout)["triggers"]) == 9
    assert ttsync("capture", "uninstall", env=env).returncode == 0
    assert json.loads(ttsync("capture", "status", "--json", env=env).stdout)["triggers"] == []


def test_schemas_export(tmp_path: Path) -> None:
    result = ttsync("schemas", "export", str(tmp_path / "out"), "--json")
    assert result.returncode == 0
    assert len(json.loads(result.stdout)["files"]) == 16


def test_doctor_json_against_the_real_services(kafka_bootstrap: str, tmp_path: Path, topic_prefix: str) -> None:
    from consumer.group_consumer import consumer_topics
    from producer.kafka_publisher import ensure_topics
    from schemas.contract import dlq_topic

    env = {"TTSYNC_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TTSYNC_TOPIC_PREFIX": topic_prefix,
           "TTSYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'doctor.sqlite3'}"}
    assert ttsync("db", "upgrade", env=env).returncode == 0
    ensure_topics(kafka_bootstrap, [*consumer_topics(topic_prefix, [10, 60, 300]), dlq_topic(topic_prefix)], 1, 1)
    result = ttsync("doctor", "--json", "--no-start", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert [c["name"] for c in report["checks"]] == ["database", "capture_schema", "kafka", "topics"]
    probed = json.loads(ttsync("doctor", "--json", "--no-start", "--roundtrip", env=env).stdout)
    assert [c["name"] for c in probed["checks"]][-1] == "roundtrip" and probed["ok"] is True


def test_doctor_reads_only_an_unmigrated_database_is_reported_not_migrated(kafka_bootstrap: str,
                                                                           pg_database: str) -> None:
    """doctor once ran the migrations and created and dropped a probe table in TimeTracker's database."""
    from sqlalchemy import create_engine, inspect

    env = {"TTSYNC_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TTSYNC_DATABASE_URL": pg_database}
    result = ttsync("doctor", "--json", "--no-start", env=env)
    assert result.returncode == 1
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert "run `ttsync db upgrade`" in checks["database"]["detail"]
    engine = create_engine(pg_database)
    try:
        assert inspect(engine).get_schema_names() == ["information_schema", "public"]  # no ttsync schema made
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_doctor_reports_a_missing_broker_with_exit_1(tmp_path: Path) -> None:
    env = {"TTSYNC_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
           "TTSYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'doctor.sqlite3'}"}
    assert ttsync("db", "upgrade", env=env).returncode == 0
    result = ttsync("doctor", "--json", "--no-start", env=env)
    assert result.returncode == 1
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["database"]["ok"] is True and checks["kafka"]["ok"] is False


def test_consume_on_an_unmigrated_state_database_exits_2_at_once(tmp_path: Path, kafka_bootstrap: str) -> None:
    """It retried for ever (`--max-seconds 5` ran 60 s until killed)."""
    env = {"TTSYNC_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "TTSYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'state.sqlite3'}"}
    result = ttsync("consume", "--max-seconds", "5", env=env, timeout=60)
    assert result.returncode == 2
    assert "run `ttsync db upgrade`" in result.stderr and "Traceback" not in result.stderr


DAEMONS = ("relay", "consume")
BROKER_COMMANDS = [["lag"], ["dlq", "list"], ["dlq", "show", "0:0"], ["dlq", "replay", "--dry-run"]]
DATABASE_COMMANDS = [["outbox", "status"], ["db", "current"], ["db", "upgrade"], ["capture", "status"],
                     ["capture", "install"], ["capture", "snapshot", "--dry-run"], ["outbox", "purge"],
                     ["map", "list"], ["qbo", "status"], ["relay", "--once"], ["consume", "--max-seconds", "5"],
                     ["reconcile"]]


@pytest.mark.parametrize("command", BROKER_COMMANDS)
def test_a_stopped_broker_ends_a_command_in_one_line_exit_4_and_a_json_error(command: list[str]) -> None:
    env = {"TTSYNC_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    plain = ttsync(*command, env=env, timeout=60)
    assert plain.returncode == 4, plain.stdout + plain.stderr
    lines = [ln for ln in plain.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no Kafka broker answers at 127.0.0.1:1" in lines[0], plain.stderr
    as_json = ttsync(*command, "--json", env=env, timeout=60)
    assert as_json.returncode == 4 and json.loads(as_json.stdout)["exit_code"] == 4


@pytest.mark.parametrize("command", DATABASE_COMMANDS)
def test_a_stopped_database_ends_a_command_in_one_line_exit_4_and_a_json_error(command: list[str]) -> None:
    env = {"TTSYNC_DATABASE_URL": "postgresql+psycopg://ttsync:s3cret-pw@127.0.0.1:1/timetracker",
           "TTSYNC_SECRET_KEY": "a-passphrase-of-16+chars"}
    plain = ttsync(*command, env=env, timeout=60)
    assert plain.returncode == 4, plain.stdout + plain.stderr
    lines = [ln for ln in plain.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "does not answer" in lines[0] and "s3cret-pw" not in plain.stderr, plain.stderr
    if command[0] in DAEMONS:  # long-running, their output is the log: no --json
        return
    as_json = ttsync(*command, "--json", env=env, timeout=60)
    assert as_json.returncode == 4 and json.loads(as_json.stdout)["error"].startswith("database postgresql")


@pytest.mark.parametrize("command", [*BROKER_COMMANDS, *DATABASE_COMMANDS, ["relay", "--once"], ["consume"],
                                     ["doctor"], ["reconcile"]])
def test_a_malformed_setting_ends_every_command_in_one_line_with_exit_2(command: list[str]) -> None:
    env = {"TTSYNC_EXPENSE_ACCOUNT_MAP": "{not json"}
    plain = ttsync(*command, env=env, timeout=60)
    assert plain.returncode == 2, plain.stdout + plain.stderr
    assert len([ln for ln in plain.stderr.splitlines() if ln.strip()]) == 1, plain.stderr
    assert "expense_account_map" in plain.stderr
    as_json = ttsync(*command, "--json", env=env, timeout=60) if command[0] not in DAEMONS else None
    if as_json is not None:
        assert as_json.returncode == 2 and json.loads(as_json.stdout)["exit_code"] == 2


def test_relay_once_on_sqlite_publishes_the_backlog(kafka_bootstrap: str, tmp_path: Path, topic_prefix: str) -> None:
    from sqlalchemy.orm import sessionmaker

    from producer.database import make_engine
    from producer.session_capture import install_session_capture
    from schemas import all_topics
    from tests.capture_scenario import EXPECTED, play
    from tests.kafka_helpers import read_topics

    url = f"sqlite:///{tmp_path / 'tt.sqlite3'}"
    env = {"TTSYNC_DATABASE_URL": url, "TTSYNC_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "TTSYNC_TOPIC_PREFIX": topic_prefix}
    assert ttsync("db", "upgrade", "--timetracker-schema", env=env).returncode == 0
    factory = sessionmaker(make_engine(url))
    install_session_capture(factory)
    play(factory)
    result = ttsync("relay", "--once", env=env)
    assert result.returncode == 0, result.stderr
    assert any('"relay_exit"' in line and f'"published": {len(EXPECTED)}' in line
               for line in result.stderr.splitlines()), result.stderr[-2000:]
    records = read_topics(kafka_bootstrap, all_topics(topic_prefix), until=lambda r: len(r) >= len(EXPECTED))
    assert len(records) == len(EXPECTED)
    status = json.loads(ttsync("outbox", "status", "--json", env=env).stdout)
    assert status["backlog"] == 0 and status["published_retained"] == len(EXPECTED)


@pytest.mark.slow
def test_the_readme_first_command_runs_the_demo_to_a_green_end(kafka_bootstrap: str, tmp_path: Path) -> None:
    """The README's main job, in its short mode (the same code path on fewer records)."""
    from kafka import KafkaAdminClient

    def demo_topics() -> set[str]:
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            return {t for t in admin.list_topics() if t.startswith("demo")}
        finally:
            admin.close()

    before = demo_topics()
    env = {"HOME": str(tmp_path)}
    result = ttsync("demo", "--quick", "--json", "--kafka", kafka_bootstrap, "--direction", "both", env=env,
                    timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["replayed"] == 1
    assert report["qbo"]["Invoice"] == 4 and report["qbo"]["Purchase"] == 3 and report["qbo"]["Customer"] == 5
    assert report["dead_letters_left"] == {"malformed_event": 1}
    assert report["imported_payment_s"] is not None  # and back: a payment received in QBO marked an invoice paid
    assert report["seconds"] < 120
    assert demo_topics() == before  # an existing broker is left as the demo found it
    assert "event_failed" not in result.stderr and "event_dead_lettered" not in result.stderr  # counted, not warned


def test_capture_snapshot_on_sqlite_dry_run_then_run_then_bad_options(tmp_path: Path) -> None:
    env = {"TTSYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'tt.sqlite3'}"}
    assert ttsync("db", "upgrade", "--timetracker-schema", env=env).returncode == 0
    from sqlalchemy.orm import Session

    from producer.database import make_engine
    from tests.timetracker_data import base_rows, new_invoice

    engine = make_engine(env["TTSYNC_DATABASE_URL"])
    with Session(engine) as s:
        user, client, project = base_rows(s)
        new_invoice(s, user, client, project, number="C-1", status="sent")
        s.commit()
    engine.dispose()
    dry = ttsync("capture", "snapshot", "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["total"] == 2 and json.loads(dry.stdout)["enqueued"] == 0
    run = ttsync("capture", "snapshot", "--json", "--types", "invoice", env=env)
    assert run.returncode == 0 and json.loads(run.stdout)["enqueued"] == 1, run.stderr
    assert ttsync("outbox", "status", "--json", env=env).stdout.count('"backlog": 1') == 1
    bad_type = ttsync("capture", "snapshot", "--types", "invoice,timesheet", env=env)
    assert bad_type.returncode == 2 and "timesheet" in bad_type.stderr
    bad_date = ttsync("capture", "snapshot", "--since", "last tuesday", env=env)
    assert bad_date.returncode == 2 and "--since" in bad_date.stderr
    # Never-published rows are not the polling relay's to drop, and a zero age is refused.
    for args in (("--older-than-hours", "0"), ("--older-than-hours", "-1"), ("--include-unpublished",)):
        refused = ttsync("outbox", "purge", *args, "--json", env=env)
        assert refused.returncode == 2 and "error" in json.loads(refused.stdout), refused.stdout
    assert ttsync("outbox", "status", "--json", env=env).stdout.count('"backlog": 1') == 1
