"""How every ttsync Kafka client reaches the brokers: bootstrap servers and security, held once.

The relay, the consumer, ``lag``, ``dlq``, ``doctor`` and the topic admin all build their clients from one
``KafkaConnection``, so a SASL_SSL cluster (MSK, Confluent Cloud, Aiven, a Strimzi TLS listener) needs its
settings in one place only. A bare bootstrap string still works where code or a benchmark passes one: it is a
PLAINTEXT connection, as before.

``principal_acls`` says which ACLs each ttsync principal needs, and nothing more: the relay only writes the
aggregate topics, the consumer only reads them and writes its retry and dead-letter topics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from schemas.contract import DLQ_REPLAY_GROUP_SUFFIX, all_topics, dlq_topic, retry_topic

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


# The largest record a ttsync producer sends (relay, retry and dead-letter forwards, DLQ replay): an invoice with
# hundreds of lines and its client fits. The broker's max.message.bytes (1 MiB by default) applies on top.
MAX_RECORD_BYTES: Final = 8 * 1024 * 1024


@dataclass(frozen=True)
class OutRecord:
    """A record a ttsync producer sends: the relay's events, the consumer's forwards, the DLQ's replays."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


class KafkaConfigError(ValueError):
    """The Kafka security settings do not describe a usable connection (said before any client is made)."""


@dataclass(frozen=True)
class KafkaConnection:
    bootstrap_servers: str
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = field(default=None, repr=False)
    ssl_check_hostname: bool = True

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol.endswith("SSL")

    def problems(self) -> list[str]:
        """What makes this connection unusable, in words an operator can act on (empty when it is sound)."""
        found: list[str] = []
        if self.security_protocol not in SECURITY_PROTOCOLS:
            found.append(f"security protocol {self.security_protocol!r} is not one of {', '.join(SECURITY_PROTOCOLS)}")
        if self.uses_sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                found.append(f"{self.security_protocol} needs a SASL mechanism ({', '.join(SASL_MECHANISMS)})")
            if not self.sasl_username or not self.sasl_password:
                found.append(f"{self.security_protocol} needs a SASL username and password")
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password:
            found.append(f"SASL credentials are set but the security protocol is {self.security_protocol}: "
                         "they would not be used (SASL_SSL or SASL_PLAINTEXT)")
        if not self.uses_tls and (self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile):
            found.append(f"TLS files are set but the security protocol is {self.security_protocol}: they would "
                         "not be used (SSL or SASL_SSL)")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            found.append("a client certificate needs both its certificate and its key file")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                found.append(f"{name} {path} is not a readable file")
        return found

    def check(self) -> KafkaConnection:
        problems = self.problems()
        if problems:
            raise KafkaConfigError("Kafka connection settings: " + "; ".join(problems))
        return self

    def client_config(self) -> dict[str, Any]:
        """Keyword arguments of every kafka-python client (KafkaProducer, KafkaConsumer, KafkaAdminClient)."""
        config: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers,
                                  "security_protocol": self.security_protocol}
        if self.uses_tls:
            config["ssl_check_hostname"] = self.ssl_check_hostname
            for ours, theirs in (("ssl_cafile", "ssl_cafile"), ("ssl_certfile", "ssl_certfile"),
                                 ("ssl_keyfile", "ssl_keyfile"), ("ssl_key_password", "ssl_password")):
                if getattr(self, ours):
                    config[theirs] = getattr(self, ours)
        if self.uses_sasl:
            config.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                          sasl_plain_password=self.sasl_password)
        return config

    def producer_config(self, client_id: str) -> dict[str, Any]:
        """A kafka-python producer that never writes a record twice nor out of order: idempotent, acks=all."""
        return {**self.client_config(), "client_id": client_id, "acks": "all", "enable_idempotence": True,
                "max_request_size": MAX_RECORD_BYTES}

    def librdkafka_producer_config(self, client_id: str, timeout_s: float = 15.0) -> dict[str, Any]:
        """An idempotent, acks=all librdkafka producer (the relay's, the consumer's forwards) that waits no more
        than ``timeout_s`` for a delivery."""
        return {
            **self.librdkafka_config(), "client.id": client_id,
            "enable.idempotence": True, "acks": "all",  # idempotence keeps order with up to 5 requests in flight
            "max.in.flight.requests.per.connection": 5, "linger.ms": 5, "batch.size": 1024 * 1024,
            "message.max.bytes": MAX_RECORD_BYTES + 64 * 1024,
            "message.timeout.ms": int(timeout_s * 1000) + 10_000, "socket.timeout.ms": 10_000,
            # ttsync creates its topics itself, with their partitions: never the broker's defaults
            "allow.auto.create.topics": False,
        }

    def librdkafka_config(self) -> dict[str, Any]:
        """The same connection in librdkafka's (confluent-kafka's) property names."""
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers,
                                  "security.protocol": self.security_protocol.lower()}
        if self.uses_tls:
            config["ssl.endpoint.identification.algorithm"] = "https" if self.ssl_check_hostname else "none"
            for ours, theirs in (("ssl_cafile", "ssl.ca.location"), ("ssl_certfile", "ssl.certificate.location"),
                                 ("ssl_keyfile", "ssl.key.location"), ("ssl_key_password", "ssl.key.password")):
                if getattr(self, ours):
                    config[theirs] = getattr(self, ours)
        if self.uses_sasl:
            config.update({"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.sasl_username,
                           "sasl.password": self.sasl_password})
        return config


def connection_from_env(env: Mapping[str, str], bootstrap: str | None = None) -> KafkaConnection:
    """The TTSYNC_KAFKA_* variables (as ttsync.settings reads them, and as deploy/local/kafka.sh writes them per
    user) without pydantic: for the scripts of deploy/local and the tests."""
    return KafkaConnection(
        bootstrap_servers=bootstrap or env.get("TTSYNC_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        security_protocol=env.get("TTSYNC_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),  # type: ignore[arg-type]
        sasl_mechanism=env.get("TTSYNC_KAFKA_SASL_MECHANISM"),  # type: ignore[arg-type]
        sasl_username=env.get("TTSYNC_KAFKA_SASL_USERNAME"), sasl_password=env.get("TTSYNC_KAFKA_SASL_PASSWORD"),
        ssl_cafile=env.get("TTSYNC_KAFKA_SSL_CAFILE")).check()


def as_connection(kafka: KafkaConnection | str) -> KafkaConnection:
    """A bootstrap string is a PLAINTEXT connection (tests, benchmarks, a local broker)."""
    return kafka if isinstance(kafka, KafkaConnection) else KafkaConnection(bootstrap_servers=kafka)


def open_consumer(kafka: KafkaConnection | str, **config: Any) -> Any:
    """A kafka-python ``KafkaConsumer`` that never creates a topic by asking for it. ttsync creates its topics
    itself, with their partitions and retention; one a consumer's metadata request re-created on a broker with
    ``auto.create.topics.enable`` (the default) would have the broker's defaults, and a read-only command
    (``lag``, ``dlq list``) would have written to the cluster. Seen: the demo's deleted import topics came back."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(**as_connection(kafka).client_config(), allow_auto_create_topics=False, **config)
    # kafka-python 3.0.12 accepts the setting but builds its ClusterMetadata without it (kafka/net/manager.py), so
    # every metadata request still asks the broker to create the topic (cf. dpkp/kafka-python#2083, where the
    # setting is the maintainers' answer): set it where the metadata request reads it.
    consumer._client.cluster.config["allow_auto_create_topics"] = False
    return consumer


# -- least privilege -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class AclGrant:
    """One ACL: ``principal`` may ``operation`` the ``resource_type`` named ``name`` (literal or prefixed)."""

    principal: str
    resource_type: Literal["TOPIC", "GROUP", "CLUSTER"]
    name: str
    operation: Literal["READ", "WRITE", "DESCRIBE", "CREATE", "DESCRIBE_CONFIGS", "IDEMPOTENT_WRITE"]
    pattern: Literal["LITERAL", "PREFIXED"] = "LITERAL"

    def describe(self) -> str:
        star = "*" if self.pattern == "PREFIXED" else ""
        return f"{self.principal} {self.operation} {self.resource_type} {self.name}{star}"


def principal_acls(*, relay: str, consumer: str, prefix: str, group: str,
                   retry_delays_s: list[int] | tuple[int, ...]) -> list[AclGrant]:
    """The ACLs ttsync's two principals need (``User:<name>``), and no more.

    Relay: write (and create, describe) the aggregate topics; nothing else, so it can neither read invoices nor
    touch the retry or dead-letter topics. Consumer: read the aggregate, retry and dead-letter topics with its
    groups (the main group, its DLQ replay group, and the position-free readers of ``dlq list`` and ``lag``),
    and write only its retry and dead-letter topics; never the aggregate topics, so a stolen consumer credential
    cannot forge events. The operator's ``dlq replay`` and ``lag`` run as the consumer principal.
    """
    main = all_topics(prefix)
    retries = [retry_topic(t, d) for t in main for d in retry_delays_s]
    dead = dlq_topic(prefix)
    r, c = f"User:{relay}", f"User:{consumer}"
    grants = [AclGrant(r, "TOPIC", t, op) for t in main for op in ("WRITE", "DESCRIBE", "CREATE")]
    grants.append(AclGrant(r, "CLUSTER", "kafka-cluster", "IDEMPOTENT_WRITE"))
    for t in main:
        grants += [AclGrant(c, "TOPIC", t, "READ"), AclGrant(c, "TOPIC", t, "DESCRIBE")]
    for t in [*retries, dead]:
        grants += [AclGrant(c, "TOPIC", t, op) for op in ("READ", "WRITE", "DESCRIBE", "CREATE")]
    grants.append(AclGrant(c, "TOPIC", dead, "DESCRIBE_CONFIGS"))
    grants.append(AclGrant(c, "CLUSTER", "kafka-cluster", "IDEMPOTENT_WRITE"))
    for g in (group, group + DLQ_REPLAY_GROUP_SUFFIX):
        grants += [AclGrant(c, "GROUP", g, "READ"), AclGrant(c, "GROUP", g, "DESCRIBE")]
    return grants
