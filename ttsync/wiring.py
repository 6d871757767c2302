"""Build ttsync's workers from settings: the one place that knows how the parts fit together (engines, the
relay and its publisher, the consumer and its ports, topics, signals, the metrics server). The CLI, the demo,
the tests and the benchmarks all build through here."""

from __future__ import annotations

import datetime as dt
import gc
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Engine

from consumer import metrics
from consumer.applier import EventApplier
from consumer.crash_points import crash_hook_from_env
from consumer.errors import ConfigurationError
from consumer.group_consumer import GroupConsumer, consumer_topics, with_retry_topics
from consumer.housekeeping import ProcessedEventsRetention
from consumer.kafka_port import ConsumerPort, KafkaPythonConsumer
from consumer.lifecycle import SyncPolicy
from consumer.mapping import MappingOptions
from consumer.outage import OutageBreaker
from consumer.qbo_client import QboClient
from consumer.rate_limit import make_rate_limiter
from consumer.references import DEFAULT_EXPENSE_ACCOUNTS, ReferenceResolver, ResolverConfig
from consumer.retry_policy import RetryPolicy
from consumer.state_store import StateStore
from consumer.token_store import TokenStore, make_cipher
from ops.probe import kafka_answers
from producer.database import make_engine
from producer.kafka_publisher import KafkaRecordPublisher, RecordPublisher, ensure_topics
from producer.outbox_relay import OutboxRelay
from schemas.contract import (
    IMPORT_GROUP_SUFFIX,
    all_topics,
    dlq_topic,
    dlq_topic_configs,
    qbo_changes_topic,
)
from schemas.kafka_client import KafkaConnection
from ttsync.settings import Settings


@dataclass
class ConsumerParts:
    engine: Engine
    tokens: TokenStore
    client: QboClient
    store: StateStore
    applier: EventApplier
    policy: RetryPolicy


def token_store(settings: Settings, engine: Engine) -> TokenStore:
    if settings.secret_key is None:
        raise ConfigurationError("TTSYNC_SECRET_KEY is not set: it encrypts the QBO tokens at rest")
    return TokenStore(
        engine, settings.qbo_realm_id, make_cipher(settings.secret_key.get_secret_value()),
        token_url=settings.qbo_token_url, client_id=settings.qbo_client_id,
        client_secret=settings.qbo_client_secret.get_secret_value(),
        seed_refresh_token=settings.qbo_refresh_token.get_secret_value() if settings.qbo_refresh_token else None,
        timeout_s=settings.qbo_timeout_s,
    )


def build_parts(settings: Settings, engine: Engine | None = None) -> ConsumerParts:
    engine = engine or make_engine(settings.effective_state_database_url)
    tokens = token_store(settings, engine)
    limiter = make_rate_limiter(engine, settings.qbo_realm_id, settings.qbo_requests_per_minute,
                                settings.qbo_rate_fraction, settings.qbo_burst)
    batch_limiter = make_rate_limiter(engine, f"{settings.qbo_realm_id}:batch", settings.qbo_batch_requests_per_minute,
                                      settings.qbo_rate_fraction, 2)
    client = QboClient(settings.qbo_base_url, settings.qbo_realm_id, tokens, limiter, batch_limiter=batch_limiter,
                       minorversion=settings.qbo_minorversion, timeout_s=settings.qbo_timeout_s,
                       throttle_default_wait_s=settings.qbo_throttle_default_wait_s,
                       on_call=metrics.count_qbo_call, on_wait=metrics.THROTTLE_WAIT.inc)
    store = StateStore(engine, settings.qbo_realm_id, settings.group_id)
    defaults = MappingOptions()
    options = MappingOptions(source=settings.source, multicurrency=settings.qbo_multicurrency,
                             payment_types={**defaults.payment_types, **settings.payment_method_map},
                             decode_html=settings.decode_html, default_currency=settings.default_currency.upper())
    resolver = ReferenceResolver(client, store, ResolverConfig(
        default_item=settings.qbo_default_item, bank_account=settings.qbo_bank_account,
        credit_card_account=settings.qbo_credit_card_account, deposit_account=settings.qbo_deposit_account,
        expense_accounts={**DEFAULT_EXPENSE_ACCOUNTS,
                          **{k.lower(): v for k, v in settings.expense_account_map.items()}},
        paying_accounts={k.lower(): v for k, v in settings.paying_account_map.items()},
        auto_create_customers=settings.auto_create_customers, auto_create_vendors=settings.auto_create_vendors,
        auto_create_items=settings.auto_create_items, auto_create_accounts=settings.auto_create_accounts,
    ), options)
    policy = SyncPolicy(
        invoice_sync=frozenset(settings.invoice_sync_statuses),
        expense_sync=frozenset(settings.expense_sync_statuses),
        payment_sync=frozenset(settings.payment_sync_statuses),
        sync_clients=settings.sync_clients,
        max_version_jump=settings.max_version_jump,
    )
    applier = EventApplier(client, store, resolver, policy, options, adopt_legacy=settings.adopt_legacy,
                           crash=crash_hook_from_env(os.environ))
    retry = RetryPolicy(inplace_attempts=settings.retry_inplace_attempts, backoff_base_s=settings.retry_backoff_s,
                        backoff_max_s=settings.retry_backoff_max_s,
                        topic_delays_s=tuple(settings.retry_topic_delays_s),
                        dependency_wait_max_s=settings.dependency_wait_max_hours * 3600)
    return ConsumerParts(engine, tokens, client, store, applier, retry)


def build_consumer(settings: Settings, parts: ConsumerParts | None = None, *, client_id: str = "ttsync-consumer",
                   session_timeout_ms: int = 10_000) -> GroupConsumer:
    parts = parts or build_parts(settings)
    port = consumer_port(settings, settings.group_id, client_id, session_timeout_ms)
    return GroupConsumer(port=port, group_id=settings.group_id, topic_prefix=settings.topic_prefix,
                         applier=parts.applier, policy=parts.policy,
                         batch_min_records=settings.qbo_batch_min_backlog,
                         unjoined_exit_s=settings.consumer_unjoined_exit_s,
                         broker_answers=lambda: kafka_answers(settings.kafka),
                         breaker=OutageBreaker(threshold=settings.consumer_outage_records,
                                               max_open_s=settings.consumer_outage_exit_s),
                         crash=parts.applier.executor.crash,
                         retention=ProcessedEventsRetention(parts.store, settings.processed_events_retention))


# -- the relay ----------------------------------------------------------------------------------------------


def build_relay(settings: Settings, engine: Engine | None = None, publisher: RecordPublisher | None = None, *,
                kafka: KafkaConnection | str | None = None, **overrides: Any) -> OutboxRelay:
    """The relay as ``ttsync relay`` runs it (batch size, poll interval, buckets, retention from the settings;
    ``overrides`` for a test or a benchmark). Its publisher is ``relay.publisher``: the caller closes it."""
    options: dict[str, Any] = {
        "topic_prefix": settings.topic_prefix, "batch_size": settings.relay_batch_size,
        "poll_interval_s": settings.relay_poll_interval_s, "buckets": settings.relay_buckets,
        "retention": dt.timedelta(hours=settings.outbox_retention_hours), **overrides}
    return OutboxRelay(engine or make_engine(settings.database_url),
                       publisher or relay_publisher(settings, kafka or settings.kafka), **options)


def freeze_startup_heap() -> None:
    """Move what a worker allocated while starting (modules, settings, clients: it lives as long as the process)
    out of the garbage collector's sight (``gc.freeze``), so that its full collections walk only the objects of
    the batches in hand. On the relay this is worth ~10% events/s (``benchmarks/relay.py``)."""
    gc.collect()
    gc.freeze()


def _librdkafka_present() -> None:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError("TTSYNC_KAFKA_CLIENT=confluent needs confluent-kafka: pip install "
                                 "'ttsync[librdkafka]'") from exc


def relay_publisher(settings: Settings, kafka: KafkaConnection | str) -> RecordPublisher:
    """The relay's producer on the client ``TTSYNC_KAFKA_CLIENT`` names."""
    if settings.kafka_client == "confluent":
        _librdkafka_present()
        from producer.librdkafka_publisher import LibrdkafkaRecordPublisher

        return LibrdkafkaRecordPublisher(kafka)
    return KafkaRecordPublisher(kafka)


def consumer_port(settings: Settings, group_id: str, client_id: str, session_timeout_ms: int) -> ConsumerPort:
    """A consumer group member on the client ``TTSYNC_KAFKA_CLIENT`` names."""
    if settings.kafka_client == "confluent":
        _librdkafka_present()
        from consumer.librdkafka_port import LibrdkafkaConsumer

        return LibrdkafkaConsumer(settings.kafka, group_id=group_id, client_id=client_id,
                                  max_poll_records=settings.consumer_max_poll_records,
                                  session_timeout_ms=session_timeout_ms, instance_id=settings.consumer_instance_id)
    return KafkaPythonConsumer(settings.kafka, group_id=group_id, client_id=client_id,
                               max_poll_records=settings.consumer_max_poll_records,
                               session_timeout_ms=session_timeout_ms, instance_id=settings.consumer_instance_id)


# -- topics: the aggregate topics are the relay's to create, the retry and dead-letter topics the consumer's ----


def ensure_relay_topics(settings: Settings, kafka: KafkaConnection | str | None = None) -> list[str]:
    return ensure_topics(kafka or settings.kafka, all_topics(settings.topic_prefix), settings.topic_partitions,
                         settings.topic_replication_factor, settings.topic_configs)


def ensure_consumer_topics(settings: Settings) -> list[str]:
    created = ensure_topics(settings.kafka, consumer_topics(settings.topic_prefix, settings.retry_topic_delays_s),
                            settings.topic_partitions, settings.topic_replication_factor, settings.topic_configs)
    # One partition: an operator reads the dead letters in the order they came.
    return created + ensure_topics(settings.kafka, [dlq_topic(settings.topic_prefix)], 1,
                                   settings.topic_replication_factor,
                                   {**settings.topic_configs, **dlq_topic_configs(settings.dlq_retention_days)})


# -- process plumbing ------------------------------------------------------------------------------------------


def stop_on_signals(stop: Callable[[], None], doing: str) -> None:
    """SIGTERM and SIGINT call ``stop``; the worker finishes ``doing`` first (logged with the signal)."""
    log = structlog.get_logger("ttsync.cli")

    def handler(signum: int, _frame: Any) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name, action=doing)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def serve_metrics(settings: Settings, engine: Engine, registry: Any, port: int | None,
                  heartbeat: Callable[[], float] | None = None) -> Any:
    """/metrics, /healthz (ready when broker and database answer) and /livez (the worker's loop turns), or None
    when no port is set."""
    port = settings.metrics_port if port is None else port
    if not port:
        return None
    from ops.observability import readiness
    from ttsync.health_server import HealthServer

    server = HealthServer(registry, lambda: readiness(settings.kafka, engine), port,
                          settings.metrics_host, heartbeat=heartbeat).start()
    host = str(server.httpd.server_address[0])  # where it really listens (TTSYNC_METRICS_HOST may be 0.0.0.0)
    shown = f"[{host}]" if ":" in host else host
    structlog.get_logger("ttsync.cli").info("metrics_listening", url=f"http://{shown}:{server.port}/metrics",
                                            host=host, port=server.port)
    return server


# -- the import direction (QBO -> TimeTracker) -------------------------------------------------------------------


def ensure_import_topics(settings: Settings) -> list[str]:
    topics = with_retry_topics([qbo_changes_topic(settings.topic_prefix)], settings.retry_topic_delays_s)
    created = ensure_topics(settings.kafka, topics, settings.topic_partitions, settings.topic_replication_factor,
                            settings.topic_configs)
    return created + ensure_topics(settings.kafka, [dlq_topic(settings.topic_prefix)], 1,
                                   settings.topic_replication_factor,
                                   {**settings.topic_configs, **dlq_topic_configs(settings.dlq_retention_days)})


def build_importer(settings: Settings, parts: ConsumerParts | None = None, *, client_id: str = "ttsync-import",
                   session_timeout_ms: int = 10_000, on_webhook: Callable[[], None] = lambda: None) -> GroupConsumer:
    """The import consumer group: QBO changes applied to TimeTracker's database (TTSYNC_DATABASE_URL)."""
    from consumer.writes import Outcome
    from importer.apply_customer import CustomerImporter
    from importer.apply_invoice import InvoiceImporter
    from importer.apply_payment import PaymentImporter
    from importer.consumer import EntityImporter, ImportHandler
    from importer.notifications import Change

    parts = parts or build_parts(settings)
    group = settings.group_id + IMPORT_GROUP_SUFFIX
    timetracker = make_engine(settings.database_url)
    importers: dict[str, EntityImporter] = {
        "Payment": PaymentImporter(parts.client, timetracker, parts.store, settings.qbo_realm_id,
                                   crash=parts.applier.executor.crash),
        "Invoice": InvoiceImporter(parts.client, timetracker, parts.store, on_void=settings.import_invoice_void),
        "Customer": CustomerImporter(parts.client, timetracker, parts.store,
                                     fields=tuple(settings.import_client_fields),
                                     new_customers=settings.import_new_customers)}

    def noted(event_id: str, change: Change, outcome: Outcome) -> None:
        parts.store.record_processed(group, event_id, f"qbo.{change.entity}".lower(), change.entity_id,
                                     outcome.result.value)

    port = consumer_port(settings, group, client_id, session_timeout_ms)
    return GroupConsumer(port=port, group_id=group, topic_prefix=settings.topic_prefix, applier=None,
                         handler=ImportHandler(importers, settings.qbo_realm_id, on_webhook, on_applied=noted),
                         topics=[qbo_changes_topic(settings.topic_prefix)], policy=parts.policy,
                         unjoined_exit_s=settings.consumer_unjoined_exit_s, crash=parts.applier.executor.crash,
                         broker_answers=lambda: kafka_answers(settings.kafka),
                         breaker=OutageBreaker(threshold=settings.consumer_outage_records,
                                               max_open_s=settings.consumer_outage_exit_s))


def build_webhook(settings: Settings, publisher: RecordPublisher | None = None) -> Any:
    """``ttsync webhook``'s receiver; its publisher waits for the broker before a delivery is answered 200."""
    from importer.webhook import WebhookReceiver

    if settings.qbo_webhook_verifier_token is None:
        raise ConfigurationError("TTSYNC_QBO_WEBHOOK_VERIFIER_TOKEN is not set: without it no delivery can be "
                                 "told from a forgery (Intuit's developer portal shows the app's token)")
    out = publisher or KafkaRecordPublisher(settings.kafka, client_id="ttsync-webhook")
    return WebhookReceiver(lambda records: out.wait(out.send(records)), qbo_changes_topic(settings.topic_prefix),
                           settings.qbo_webhook_verifier_token.get_secret_value(), host=settings.webhook_host,
                           port=settings.webhook_port, max_body_bytes=settings.webhook_max_body_bytes,
                           on_close=out.close if publisher is None else lambda: None)


def build_cdc_poller(settings: Settings, parts: ConsumerParts) -> tuple[Any, KafkaRecordPublisher]:
    """The CDC poller of ``ttsync import``, and its publisher (the caller closes it)."""
    from importer.cdc_poller import CdcPoller

    publisher = KafkaRecordPublisher(settings.kafka, client_id="ttsync-cdc")
    poller = CdcPoller(parts.client, parts.engine, settings.qbo_realm_id,
                       lambda records: publisher.wait(publisher.send(records)),
                       qbo_changes_topic(settings.topic_prefix))
    return poller, publisher
