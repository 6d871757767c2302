"""Find the Kafka broker and PostgreSQL that settings point at, or start local ones with deploy/local/."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import structlog

log = structlog.get_logger("ttsync.services")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_LOCAL = REPO_ROOT / "deploy" / "local"


class ServiceUnavailable(RuntimeError):
    pass


def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _first_host_port(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return (host or "127.0.0.1").strip("[]"), int(port or 9092)


def kafka_answers(bootstrap: str, timeout_s: float = 5.0) -> bool:
    host, port = _first_host_port(bootstrap)
    if not tcp_open(host, port):
        return False
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000), client_id="ttsync-probe"
        )
    except Exception:  # noqa: BLE001 - any failure to connect means "does not answer"
        return False
    try:
        admin.describe_cluster()
        return True
    except Exception:  # noqa: BLE001
        return False
    finally:
        admin.close()


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


def ensure_kafka(bootstrap: str, *, start: bool = True) -> tuple[str, bool]:
    """Return (bootstrap, started_by_us). Starts deploy/local/kafka.sh on the bootstrap's port when the
    configured broker does not answer and it is a local address."""
    if kafka_answers(bootstrap):
        return bootstrap, False
    host, port = _first_host_port(bootstrap)
    if not start or host not in ("127.0.0.1", "localhost"):
        raise ServiceUnavailable(f"no Kafka broker answers at {bootstrap}")
    log.info("starting_local_kafka", port=port)
    return run_script("kafka.sh", "start", {"KAFKA_PORT": str(port)}), True


def ensure_postgres() -> str:
    return run_script("postgres.sh", "start")
