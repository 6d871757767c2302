"""`ttsync outbox cdc-role`: Debezium's PostgreSQL role may replicate and read the outbox, and nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from producer.cdc_role import role_url

pytestmark = pytest.mark.integration

PASSWORD = "cdc-" + uuid.uuid4().hex


def _cdc_role(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TTSYNC_DATABASE_URL": db_url, "TTSYNC_CDC_PASSWORD": PASSWORD, "TTSYNC_LOG_FORMAT": "json"}
    return subprocess.run([sys.executable, "-m", "ttsync", "outbox", "cdc-role", "--json", *args], env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_the_debezium_role_replicates_and_reads_the_outbox_only(pg_engine: Engine, pg_database: str) -> None:
    role, slot = f"cdc_{uuid.uuid4().hex[:8]}", f"ttsync_{uuid.uuid4().hex[:8]}"
    unconfirmed = _cdc_role(pg_database, "--role", role, "--slot", slot)
    assert unconfirmed.returncode == 2 and "CREATE ROLE" in json.loads(unconfirmed.stdout)["error"]
    assert PASSWORD not in unconfirmed.stdout + unconfirmed.stderr
    with pg_engine.connect() as conn:
        assert conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first() is None

    done = _cdc_role(pg_database, "--role", role, "--slot", slot, "--yes")
    try:
        assert done.returncode == 0, done.stderr[-2000:]
        assert PASSWORD not in done.stdout + done.stderr
        out = json.loads(done.stdout)
        assert out["publication"] == slot and make_url(out["database_url"]).username == role
        with pg_engine.connect() as conn:
            attrs = conn.execute(text("SELECT rolreplication, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles "
                                      "WHERE rolname = :r"), {"r": role}).one()
            tables = conn.execute(text("SELECT schemaname || '.' || tablename FROM pg_publication_tables "
                                       "WHERE pubname = :p"), {"p": slot}).scalars().all()
        assert tuple(attrs) == (True, False, False, False)
        assert tables == ["ttsync.ttsync_outbox"]

        as_role = create_engine(role_url(pg_database, role, PASSWORD))
        try:
            with as_role.connect() as conn:
                conn.execute(text("SELECT COUNT(*) FROM ttsync.ttsync_outbox")).scalar_one()
            for forbidden in ("SELECT COUNT(*) FROM public.invoices", "SELECT COUNT(*) FROM public.clients",
                              "INSERT INTO ttsync.ttsync_outbox (id) VALUES (gen_random_uuid())",
                              f"CREATE PUBLICATION {slot}_2 FOR TABLE ttsync.ttsync_outbox"):
                with as_role.connect() as conn, pytest.raises(ProgrammingError, match=r"(?i)permission|owner"):
                    conn.execute(text(forbidden))
        finally:
            as_role.dispose()

        again = _cdc_role(pg_database, "--role", role, "--slot", slot, "--yes")  # idempotent: updates the role
        assert again.returncode == 0 and "ALTER ROLE" in " ".join(json.loads(again.stdout)["ran"])
    finally:
        with pg_engine.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
