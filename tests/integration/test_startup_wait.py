"""#21: relay and consumer started while their database is down wait for it in place, then run; they used to
exit 4 at once, and a supervisor restarted them in a loop (78 times in one 150 s PostgreSQL outage of the
soak). Their one-shot forms still fail at once: tests/integration/test_cli.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipeline import Pipeline, wait_until
from tests.services import private_postgres

pytestmark = pytest.mark.integration

STARTED = {"relay": "relay_started", "consume": "consumer_started"}


def _events(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # kafka-python's own lines
    return out


@pytest.mark.parametrize("command", ["relay", "consume"])
def test_a_worker_started_while_its_database_is_down_waits_for_it_then_runs(
        pipeline: Pipeline, tmp_path: Path, command: str) -> None:
    with private_postgres() as pg:
        env = pipeline.env(TTSYNC_DATABASE_URL=pg.url, TTSYNC_STARTUP_WAIT_S="300")
        up = subprocess.run([sys.executable, "-m", "ttsync", "db", "upgrade", "--timetracker-schema"], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
        assert up.returncode == 0, up.stderr
        pg.stop()
        log = tmp_path / f"{command}.log"
        with log.open("w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "ttsync", command], env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: sum(e.get("event") == "waiting_for_service" for e in _events(log)) >= 2, 60,
                       "the worker to wait for its database")
            assert proc.poll() is None, log.read_text()
            pg.start()
            wait_until(lambda: any(e.get("event") == STARTED[command] for e in _events(log)), 120,
                       f"{command} to start once the database is back")
            time.sleep(1)
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(60)
    text = log.read_text()
    assert rc == 0, text
    waits = [e for e in _events(log) if e.get("event") == "waiting_for_service"]
    assert all(str(e["error"]).startswith(f"database {pg.url} does not answer") for e in waits), waits
