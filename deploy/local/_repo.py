"""For the scripts of deploy/local: the repository's own packages, and a Kafka connection from the environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from schemas.kafka_client import KafkaConnection  # after the path above


def kafka_connection_from_env(bootstrap: str | None = None) -> KafkaConnection:
    """The TTSYNC_KAFKA_* variables kafka.sh writes per user (and ttsync's settings read), without pydantic."""
    env = os.environ.get
    return KafkaConnection(
        bootstrap_servers=bootstrap or env("TTSYNC_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        security_protocol=env("TTSYNC_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),  # type: ignore[arg-type]
        sasl_mechanism=env("TTSYNC_KAFKA_SASL_MECHANISM"),  # type: ignore[arg-type]
        sasl_username=env("TTSYNC_KAFKA_SASL_USERNAME"), sasl_password=env("TTSYNC_KAFKA_SASL_PASSWORD"),
        ssl_cafile=env("TTSYNC_KAFKA_SSL_CAFILE")).check()
