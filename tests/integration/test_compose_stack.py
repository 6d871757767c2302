"""deploy/docker-compose.yml syncs: every service's own command, with the compose file's own environment, run
here as processes (no Docker engine on this machine). Only what Docker would provide is mapped: host names to
our broker, PostgreSQL and loopback ports, the `handover` volume to a directory, and each service's published
metrics port to a free one. Then a TimeTracker change must reach the sandbox."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from sqlalchemy.orm import Session

from producer.database import make_engine
from tests.services import free_port
from tests.timetracker_data import base_rows, new_invoice

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REALM = "9130000000000001"


class Stack:
    def __init__(self, db_url: str, bootstrap: str, handover: Path) -> None:
        self.services = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())["services"]
        self.sandbox_port = free_port()
        self.db_url, self.bootstrap, self.handover = db_url, bootstrap, handover
        self.namespace = f"compose{uuid.uuid4().hex[:6]}"  # this broker is shared with other tests
        self.processes: list[subprocess.Popen[bytes]] = []

    def _map(self, value: str) -> str:
        """What Docker's network and volumes would do: names to addresses, the volume to a directory."""
        return (value.replace("kafka:19092", self.bootstrap)
                .replace("sandbox:8765", f"127.0.0.1:{self.sandbox_port}")
                .replace("/handover", str(self.handover))
                .replace("0.0.0.0", "127.0.0.1"))  # tests stay on loopback

    def env(self, name: str) -> dict[str, str]:
        own = {k: self._map(str(v)) for k, v in (self.services[name].get("environment") or {}).items()}
        if "TTSYNC_DATABASE_URL" in own:  # the compose file's postgres service: our scratch database
            own["TTSYNC_DATABASE_URL"] = self.db_url
        if "TTSYNC_METRICS_PORT" in own:  # published on a port of its own per container
            own["TTSYNC_METRICS_PORT"] = str(free_port())
        if own:
            own.update(TTSYNC_TOPIC_PREFIX=self.namespace, TTSYNC_GROUP_ID=f"{self.namespace}-qbo")
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TTSYNC_")}
        return {**clean, "TTSYNC_LOG_FORMAT": "json", **own}

    def command(self, name: str) -> list[str]:
        args = [self._map(str(a)) for a in self.services[name]["command"]]
        if name == "sandbox":
            args = [str(self.sandbox_port) if a == "8765" else a for a in args]
        return [sys.executable, "-m", "ttsync", *args]

    def run_once(self, name: str) -> None:
        done = subprocess.run(self.command(name), env=self.env(name), capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"{name}: {done.stdout[-2000:]}{done.stderr[-2000:]}"

    def start(self, name: str) -> None:
        self.processes.append(subprocess.Popen(self.command(name), env=self.env(name), stdout=subprocess.DEVNULL,
                                               stderr=subprocess.PIPE))

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def invoices(self) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.sandbox_port}/__admin/realms/{REALM}/entities?type=Invoice"
        return requests.get(url, timeout=10).json()["Invoice"]


@pytest.fixture
def stack(pg_database: str, kafka_bootstrap: str, tmp_path: Path) -> Iterator[Stack]:
    handover = tmp_path / "handover"
    handover.mkdir()
    s = Stack(pg_database, kafka_bootstrap, handover)
    try:
        yield s
    finally:
        s.stop()


def test_the_compose_stack_syncs_a_timetracker_change_to_the_sandbox(stack: Stack) -> None:
    services = stack.services
    assert services["consumer"]["depends_on"]["sandbox"] == {"condition": "service_healthy"}
    stack.start("sandbox")
    deadline = time.monotonic() + 30
    while not (stack.handover / "sandbox.env").exists():  # the sandbox's healthcheck: the handed-over settings
        assert time.monotonic() < deadline, "the sandbox wrote no settings to the handover volume"
        time.sleep(0.2)
    handed = (stack.handover / "sandbox.env").read_text()
    assert "TTSYNC_QBO_REFRESH_TOKEN=" in handed and f"127.0.0.1:{stack.sandbox_port}" in handed
    stack.run_once("migrate")
    stack.run_once("capture")
    stack.start("relay")
    stack.start("consumer")

    engine = make_engine(stack.db_url)
    try:
        with Session(engine) as s:
            user, client, project = base_rows(s, name="Compose & Co")
            new_invoice(s, user, client, project, number="INV-COMPOSE", items=2, status="sent")
            s.commit()
    finally:
        engine.dispose()
    deadline = time.monotonic() + 90
    while not stack.invoices():
        for proc in stack.processes:
            assert proc.poll() is None, f"a service exited: {proc.args}\n{proc.stderr.read().decode()[-3000:]}"  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the invoice never reached the sandbox"
        time.sleep(0.5)
    (invoice,) = stack.invoices()
    assert invoice["DocNumber"] == "INV-COMPOSE"
