"""Does a service answer? Read-only probes for readiness, doctor and the CLI's fail-fast checks."""

from __future__ import annotations

import logging
import socket

from schemas.kafka_client import KafkaConnection, as_connection


def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def first_host_port(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return (host or "127.0.0.1").strip("[]"), int(port or 9092)


def kafka_answers(kafka: KafkaConnection | str, timeout_s: float = 5.0) -> bool:
    connection = as_connection(kafka)
    host, port = first_host_port(connection.bootstrap_servers)
    if not tcp_open(host, port):
        return False
    # A probe that fails is an answer, not an error: kafka-python would log each refused connection at ERROR.
    quiet = logging.getLogger("kafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        return _cluster_answers(connection, timeout_s)
    finally:
        quiet.setLevel(level)


def _cluster_answers(connection: KafkaConnection, timeout_s: float) -> bool:
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(
            **connection.client_config(), request_timeout_ms=int(timeout_s * 1000),
            # Without it a broker that refuses us (credentials, TLS) takes kafka-python's 30 s, whatever timeout_s.
            bootstrap_timeout_ms=int(timeout_s * 1000), client_id="ttsync-probe")
    except Exception:  # noqa: BLE001 - any failure to connect means "does not answer"
        return False
    try:
        admin.describe_cluster()
        return True
    except Exception:  # noqa: BLE001
        return False
    finally:
        admin.close()
