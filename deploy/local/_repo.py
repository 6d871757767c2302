"""For the scripts of deploy/local: the repository's own packages, and a Kafka connection from the environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from schemas.kafka_client import KafkaConnection, connection_from_env  # after the path above


def kafka_connection_from_env(bootstrap: str | None = None) -> KafkaConnection:
    """This process's TTSYNC_KAFKA_* variables (kafka.sh passes a user's)."""
    return connection_from_env(os.environ, bootstrap)
