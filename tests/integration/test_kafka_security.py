"""The pipeline through a SASL_SSL broker with ACLs (deploy/local/kafka.sh, KAFKA_SECURITY=sasl_ssl): the relay
and the consumer each with their own SCRAM principal and no more rights than the README's ACLs give; a client
without credentials, with a wrong password or without the CA is refused; the operator commands reach it too."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, TopicAuthorizationFailedError
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from schemas.contract import topic_for
from tests.pipeline import Pipeline, pipeline_on
from tests.services import SecuredBroker, secured_broker
from tests.timetracker_data import base_rows, new_invoice
from ttsync.local_services import kafka_answers

pytestmark = pytest.mark.integration

PREFIX = f"sec{uuid.uuid4().hex[:6]}"
GROUP = f"{PREFIX}-qbo"


@pytest.fixture(scope="module")
def broker() -> Iterator[SecuredBroker]:
    with secured_broker(PREFIX, GROUP, "1,2") as b:
        yield b


@pytest.fixture
def secured_pipeline(broker: SecuredBroker, pg_engine: Engine, pg_database: str) -> Iterator[Pipeline]:
    with pipeline_on(pg_engine, pg_database, broker.bootstrap, PREFIX, GROUP,
                     overrides=broker.settings("ttsync-consumer"),
                     relay_kafka=broker.connection("ttsync-relay")) as pipe:
        yield pipe


def test_clients_without_the_right_credentials_or_ca_are_refused(broker: SecuredBroker) -> None:
    consumer = broker.connection("ttsync-consumer")
    assert kafka_answers(consumer, timeout_s=10)
    assert not kafka_answers(broker.bootstrap, timeout_s=5)  # PLAINTEXT, no credentials
    assert not kafka_answers(replace(consumer, sasl_password="not-the-password"), timeout_s=5)
    assert not kafka_answers(replace(consumer, sasl_username="nobody"), timeout_s=5)
    assert not kafka_answers(replace(consumer, ssl_cafile=None), timeout_s=5)  # the system CAs do not know it


def test_the_pipeline_runs_through_sasl_ssl_and_each_principal_keeps_to_its_acls(
        secured_pipeline: Pipeline, broker: SecuredBroker) -> None:
    pipe = secured_pipeline
    with Session(pipe.engine) as s:
        user, client, project = base_rows(s, name="Secure & Sound")
        new_invoice(s, user, client, project, number="INV-SASL", items=2, status="sent")
        s.commit()
    assert pipe.relay() == 2  # client.created, invoice.created (sent)

    relay_conn, consumer_conn = broker.connection("ttsync-relay"), broker.connection("ttsync-consumer")
    invoices = topic_for("invoice", PREFIX)
    # A forged record needs the relay's credential: the consumer's cannot write an aggregate topic ...
    forger = KafkaProducer(**consumer_conn.client_config(), max_block_ms=10_000)
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            forger.send(invoices, key=b"1", value=b"{}").get(15)
    finally:
        forger.close(timeout=5)
    # ... and the relay's cannot read one.
    reader = KafkaConsumer(**relay_conn.client_config(), group_id=None, enable_auto_commit=False)
    try:
        tp = TopicPartition(invoices, 0)
        reader.assign([tp])
        reader.seek(tp, 0)
        with pytest.raises(KafkaError):
            for _ in range(20):
                reader.poll(timeout_ms=500)
    finally:
        reader.close()

    # A malformed record written with the relay's principal: the consumer dead-letters it (writing the DLQ
    # is within its ACLs) and applies the rest.
    producer = KafkaProducer(**relay_conn.client_config())
    producer.send(invoices, key=b"999", value=b'{"half": ').get(15)
    producer.close(timeout=5)
    pipe.consume_until(lambda st: st.applied >= 2 and st.dead_lettered >= 1, timeout_s=90)
    (inv,) = pipe.qbo("Invoice")
    assert inv["DocNumber"] == "INV-SASL"
    assert [c["DisplayName"] for c in pipe.qbo("Customer")] == ["Secure & Sound"]

    # The operator commands reach the secured broker with the consumer's settings from the environment.
    env = pipe.env(**broker.env("ttsync-consumer"))
    listed = subprocess.run([sys.executable, "-m", "ttsync", "dlq", "list", "--json"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert json.loads(listed.stdout)["count"] == 1
    lag = subprocess.run([sys.executable, "-m", "ttsync", "lag", "--json"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert lag.returncode == 0, lag.stderr[-2000:]
    assert json.loads(lag.stdout)["group"] == GROUP
