"""Find the Kafka broker and PostgreSQL that settings point at, or start local ones with deploy/local/."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import structlog

from ops.probe import first_host_port, kafka_answers, tcp_open
from schemas.kafka_client import KafkaConnection, as_connection

log = structlog.get_logger("ttsync.services")

__all__ = ["DEPLOY_LOCAL", "ServiceUnavailable", "kafka_answers", "run_script", "tcp_open"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_LOCAL = REPO_ROOT / "deploy" / "local"


class ServiceUnavailable(RuntimeError):
    pass


def run_script(script: str, action: str, env: dict[str, str] | None = None, timeout_s: float = 300) -> str:
    """Run deploy/local/<script> <action>; returns its last line of output (address or URL)."""
    path = DEPLOY_LOCAL / script
    if not path.exists():
        raise ServiceUnavailable(f"{path} not found: run ttsync from a checkout of the repository")
    proc = subprocess.run(
        ["bash", str(path), action],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if proc.returncode != 0:
        raise ServiceUnavailable(f"{script} {action} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def ensure_kafka(kafka: KafkaConnection | str, *, start: bool = True) -> tuple[KafkaConnection, bool]:
    """Return (connection, started_by_us). Starts deploy/local/kafka.sh on the bootstrap's port when the
    configured broker does not answer, it is a local address and the connection is PLAINTEXT (a secured
    setting never falls back to an open broker of ours)."""
    connection = as_connection(kafka)
    if kafka_answers(connection):
        return connection, False
    host, port = first_host_port(connection.bootstrap_servers)
    if not start or host not in ("127.0.0.1", "localhost") or connection.security_protocol != "PLAINTEXT":
        raise ServiceUnavailable(f"no Kafka broker answers at {connection.bootstrap_servers} "
                                 f"({connection.security_protocol})")
    log.info("starting_local_kafka", port=port)
    address = run_script("kafka.sh", "start", {"KAFKA_PORT": str(port)})
    return replace(connection, bootstrap_servers=address), True


def ensure_postgres(*, durable: bool | None = None) -> str:
    """Start (or find) the local cluster; ``durable`` True/False asks for that mode (restarting a cluster that
    runs the other), None keeps the mode of a running cluster."""
    env = {} if durable is None else {"PG_DURABLE": "1" if durable else "0"}
    return run_script("postgres.sh", "start", env)
