"""Real Kafka and PostgreSQL for the tests: from the environment, else testcontainers, else deploy/local.

Under CI=true a service that cannot be had fails the run; it never skips.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from schemas.kafka_client import KafkaConnection, connection_from_env
from ttsync.local_services import DEPLOY_LOCAL, kafka_answers, run_script

CI = os.environ.get("CI", "").lower() == "true"


def unavailable(what: str) -> None:
    if CI:
        pytest.fail(f"{what} (CI=true: a missing service is a failure, not a skip)", pytrace=False)
    pytest.skip(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class LocalBroker:
    """A broker of our own from deploy/local/kafka.sh: tests may stop and restart it."""

    port: int
    state_dir: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        return {"KAFKA_PORT": str(self.port), "KAFKA_CONTROLLER_PORT": str(self.port + 1),
                "KAFKA_STATE_DIR": str(self.state_dir)}

    def start(self) -> str:
        return run_script("kafka.sh", "start", self._env())

    def stop(self) -> None:
        run_script("kafka.sh", "stop", self._env())

    def kill9(self) -> None:
        """SIGKILL: no controlled shutdown; the next start recovers the logs."""
        _sigkill_and_wait(int((self.state_dir / "broker.pid").read_text()))

    def status_code(self) -> int:
        return subprocess.run(["bash", str(DEPLOY_LOCAL / "kafka.sh"), "status"], env={**os.environ, **self._env()},
                              capture_output=True, check=False).returncode


def _free_port_run(count: int = 2) -> int:
    """The first of ``count`` consecutive free ports."""
    for _ in range(50):
        port = free_port()
        taken = False
        for other in range(port + 1, port + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", other))
                except OSError:
                    taken = True
                    break
        if not taken:
            return port
    raise RuntimeError(f"no {count} consecutive free ports")


@dataclass
class LocalCluster:
    """``nodes`` KRaft nodes of deploy/local/kafka.sh (KAFKA_NODES) in one quorum: tests may kill, stop and start
    each node."""

    port: int
    state_dir: Path
    nodes: int = 3

    def node_port(self, node: int) -> int:
        return self.port + 2 * (node - 1)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.node_port(n)}" for n in range(1, self.nodes + 1))

    def _env(self, node: int | None = None) -> dict[str, str]:
        env = {"KAFKA_PORT": str(self.port), "KAFKA_NODES": str(self.nodes), "KAFKA_STATE_DIR": str(self.state_dir)}
        return {**env, "KAFKA_NODE": str(node)} if node else env

    def start(self, node: int | None = None) -> str:
        """Every node (or one): returns once it answers metadata."""
        return run_script("kafka.sh", "start", self._env(node))

    def stop(self, node: int | None = None) -> None:
        """A clean shutdown (SIGTERM: controlled shutdown, leadership handed over first)."""
        run_script("kafka.sh", "stop", self._env(node))

    def status(self) -> subprocess.CompletedProcess[str]:
        """kafka.sh status: a line per node; exit 3 when one is not running."""
        return subprocess.run(["bash", str(DEPLOY_LOCAL / "kafka.sh"), "status"], env={**os.environ, **self._env()},
                              capture_output=True, text=True, check=False)

    def pid(self, node: int) -> int:
        return int((self.state_dir / f"node-{node}" / "broker.pid").read_text())

    def kill9(self, node: int) -> None:
        """SIGKILL: no controlled shutdown; the controller fences the node when its heartbeats stop."""
        _sigkill_and_wait(self.pid(node))

    def active_controller(self) -> int:
        """The leader of the KRaft metadata quorum, as the voters last recorded it: the quorum-state file of each
        node's metadata log holds the leader and epoch it knows; the highest epoch is the current one."""
        best = (-1, 0)
        for node in range(1, self.nodes + 1):
            state = self.state_dir / f"node-{node}" / "data" / "__cluster_metadata-0" / "quorum-state"
            try:
                known = json.loads(state.read_text())
            except (OSError, ValueError):
                continue
            if known.get("leaderId", -1) >= 0:
                best = max(best, (int(known["leaderEpoch"]), int(known["leaderId"])))
        if best[1] == 0:
            raise RuntimeError(f"no node of {self.state_dir} knows the quorum leader")
        return best[1]


class _Service(Protocol):
    state_dir: Path

    def start(self) -> str: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=_Service)


@contextmanager
def _owned(service: S, what: str) -> Iterator[S]:
    """Start a service of our own, hand it over, then stop it and remove its state directory."""
    try:
        service.start()
    except Exception as exc:  # noqa: BLE001 - reported as unavailable (fails under CI)
        shutil.rmtree(service.state_dir, ignore_errors=True)
        unavailable(f"cannot start {what}: {exc}")
    try:
        yield service
    finally:
        try:
            service.stop()
        finally:
            shutil.rmtree(service.state_dir, ignore_errors=True)


@contextmanager
def private_broker() -> Iterator[LocalBroker]:
    state = Path(tempfile.mkdtemp(prefix="ttsync-kafka-"))
    with _owned(LocalBroker(_free_port_run(2), state), "a private Kafka broker") as broker:
        yield broker


@contextmanager
def private_cluster(nodes: int = 3) -> Iterator[LocalCluster]:
    state = Path(tempfile.mkdtemp(prefix="ttsync-kafka-cluster-"))
    with _owned(LocalCluster(_free_port_run(2 * nodes), state, nodes), f"a {nodes}-node Kafka cluster") as cluster:
        yield cluster


@contextmanager
def kafka_service() -> Iterator[str]:
    env = os.environ.get("TTSYNC_KAFKA_BOOTSTRAP_SERVERS")
    if env:
        if not kafka_answers(env, timeout_s=10):
            unavailable(f"TTSYNC_KAFKA_BOOTSTRAP_SERVERS={env} does not answer")
        yield env
        return
    if docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.0.0").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    with private_broker() as broker:
        yield broker.bootstrap


@dataclass
class SecuredBroker(LocalBroker):
    """A broker of deploy/local/kafka.sh with KAFKA_SECURITY=sasl_ssl: SASL_SSL only, SCRAM users, ACLs."""

    prefix: str = "timetracker"
    group: str = "ttsync-qbo"
    retry_delays: str = "10,60,300"

    def _env(self) -> dict[str, str]:
        return {**super()._env(), "KAFKA_SECURITY": "sasl_ssl", "KAFKA_ACL_PREFIX": self.prefix,
                "KAFKA_ACL_GROUP": self.group, "KAFKA_ACL_RETRY_DELAYS": self.retry_delays}

    def env(self, user: str) -> dict[str, str]:
        """The TTSYNC_KAFKA_* settings kafka.sh wrote for ``user`` (admin, ttsync-relay, ttsync-consumer)."""
        lines = (self.state_dir / f"{user}.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))

    def settings(self, user: str) -> dict[str, str]:
        """The same as keyword arguments of ttsync.settings.Settings."""
        return {k.removeprefix("TTSYNC_").lower(): v for k, v in self.env(user).items()}

    def connection(self, user: str) -> KafkaConnection:
        return connection_from_env(self.env(user))


@contextmanager
def secured_broker(prefix: str, group: str, retry_delays: str) -> Iterator[SecuredBroker]:
    """A private SASL_SSL broker whose ACLs are those ttsync documents for ``prefix`` and ``group``."""
    state = Path(tempfile.mkdtemp(prefix="ttsync-kafka-sasl-"))
    with _owned(SecuredBroker(_free_port_run(2), state, prefix, group, retry_delays),
                "a SASL_SSL Kafka broker") as broker:
        yield broker


@dataclass
class LocalPostgres:
    """A PostgreSQL cluster of our own from deploy/local/postgres.sh: tests may stop, kill and restart it.
    ``durable``: fsync, synchronous_commit and full_page_writes on (what a durability proof needs)."""

    port: int
    state_dir: Path
    url: str = ""
    durable: bool = False

    def _env(self) -> dict[str, str]:
        return {"PGPORT": str(self.port), "PG_STATE_DIR": str(self.state_dir), "PG_DURABLE": "1" if self.durable
                else "0"}

    def start(self) -> str:
        self.url = run_script("postgres.sh", "start", self._env())
        return self.url

    def stop(self) -> None:
        run_script("postgres.sh", "stop", self._env())

    def kill9(self) -> int:
        """SIGKILL to the postmaster and every process it started, at once, as a power cut would leave them: no
        shutdown checkpoint, the next start replays the WAL. Returns how many processes were killed."""
        postmaster = int((self.state_dir / "data" / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True,
                                  check=False).stdout.split()
        pids = [postmaster, *(int(c) for c in children)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30  # the next start refuses while one of them still holds shared memory
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        return len(pids)


def _sigkill_and_wait(pid: int, timeout_s: float = 30) -> None:
    """SIGKILL to one process, then until it is gone (a port it held is free for the next start)."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Running, or dying: a zombie (state Z) holds nothing any more."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@contextmanager
def private_postgres(*, durable: bool = False) -> Iterator[LocalPostgres]:
    state = Path(tempfile.mkdtemp(prefix="ttsync-pg-"))
    with _owned(LocalPostgres(free_port(), state, durable=durable), "a private PostgreSQL") as pg:
        yield pg


@contextmanager
def postgres_service() -> Iterator[str]:
    env = os.environ.get("TTSYNC_TEST_POSTGRES_URL") or os.environ.get("TTSYNC_DATABASE_URL")
    if env and env.startswith("postgresql"):
        yield env
        return
    if docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver="psycopg") as container:
            yield container.get_connection_url()
        return
    state = Path(tempfile.mkdtemp(prefix="ttsync-pg-"))
    env_vars = {"PG_STATE_DIR": str(state)}
    env_vars.pop("PGPORT", None)
    try:
        url = run_script("postgres.sh", "start", env_vars)
    except Exception as exc:  # noqa: BLE001
        unavailable(f"cannot start PostgreSQL: {exc}")
    try:
        yield url
    finally:
        try:
            run_script("postgres.sh", "stop", env_vars)
        finally:
            shutil.rmtree(state, ignore_errors=True)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"
