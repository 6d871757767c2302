"""Kafka security settings: one connection for every client, refused early when it cannot work, secrets kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.kafka_client import KafkaConfigError, KafkaConnection, as_connection
from ttsync.settings import Settings


def test_a_bootstrap_string_is_a_plaintext_connection() -> None:
    conn = as_connection("b1:9092,b2:9092")
    assert conn.client_config() == {"bootstrap_servers": "b1:9092,b2:9092", "security_protocol": "PLAINTEXT"}
    assert as_connection(conn) is conn


def test_sasl_ssl_settings_reach_every_client_config(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = Settings(kafka_bootstrap_servers="b:9094", kafka_security_protocol="SASL_SSL",
                        kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="ttsync-relay",
                        kafka_sasl_password="s3cret-pw", kafka_ssl_cafile=str(ca))
    config = settings.kafka.client_config()
    assert config == {"bootstrap_servers": "b:9094", "security_protocol": "SASL_SSL", "ssl_check_hostname": True,
                      "ssl_cafile": str(ca), "sasl_mechanism": "SCRAM-SHA-512",
                      "sasl_plain_username": "ttsync-relay", "sasl_plain_password": "s3cret-pw"}
    rd = settings.kafka.librdkafka_config()
    assert rd["security.protocol"] == "sasl_ssl" and rd["sasl.password"] == "s3cret-pw"
    assert rd["ssl.ca.location"] == str(ca)
    assert "s3cret-pw" not in repr(settings) and "s3cret-pw" not in repr(settings.kafka)


@pytest.mark.parametrize("values, problem", [
    ({"kafka_security_protocol": "SASL_SSL"}, "needs a SASL mechanism"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN"}, "needs a SASL username"),
    ({"kafka_sasl_username": "u", "kafka_sasl_password": "p"}, "would not be used"),
    ({"kafka_ssl_cafile": "/etc/hosts"}, "TLS files are set but"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nonexistent/ca.pem"}, "not a readable file"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "/etc/hosts"}, "needs both"),
])
def test_settings_that_cannot_work_are_refused_when_they_load(values: dict[str, str], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Settings(**values)


def test_check_raises_a_configuration_error() -> None:
    with pytest.raises(KafkaConfigError):
        KafkaConnection("b:9092", security_protocol="SASL_PLAINTEXT").check()
