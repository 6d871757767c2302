"""Exit 0 once a Kafka broker at BOOTSTRAP answers a metadata request, 1 otherwise.

Used by kafka.sh: a listening TCP port is not enough, the broker must have joined its KRaft quorum. A secured
broker is reached with the TTSYNC_KAFKA_* settings in the environment (kafka.sh passes the admin user's).
"""

from __future__ import annotations

import sys

from _repo import kafka_connection_from_env


def main() -> int:
    bootstrap = sys.argv[1]
    timeout_s = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    try:
        from kafka import KafkaAdminClient
    except ImportError:
        # Without kafka-python we can only trust the open port (kafka.sh checked it already).
        return 0
    try:
        admin = KafkaAdminClient(
            **kafka_connection_from_env(bootstrap).client_config(),
            request_timeout_ms=int(timeout_s * 1000),
            client_id="ttsync-wait",
        )
        try:
            admin.describe_cluster()
        finally:
            admin.close()
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
        print(f"not ready: {exc!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
