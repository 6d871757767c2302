"""Build the consumer's parts from settings: one place that knows how they fit together."""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import Engine

from consumer import metrics
from consumer.applier import EventApplier
from consumer.crash_points import crash_hook_from_env
from consumer.errors import ConfigurationError
from consumer.group_consumer import GroupConsumer
from consumer.kafka_port import KafkaPythonConsumer
from consumer.lifecycle import SyncPolicy
from consumer.mapping import MappingOptions
from consumer.outage import OutageBreaker
from consumer.qbo_client import QboClient
from consumer.rate_limit import make_rate_limiter
from consumer.references import DEFAULT_EXPENSE_ACCOUNTS, ReferenceResolver, ResolverConfig
from consumer.retry_policy import RetryPolicy
from consumer.state_store import StateStore
from consumer.token_store import TokenStore, make_cipher
from producer.database import make_engine
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
    port = KafkaPythonConsumer(settings.kafka, group_id=settings.group_id, client_id=client_id,
                               max_poll_records=settings.consumer_max_poll_records,
                               session_timeout_ms=session_timeout_ms)
    return GroupConsumer(port=port, group_id=settings.group_id, topic_prefix=settings.topic_prefix,
                         applier=parts.applier, policy=parts.policy,
                         batch_min_records=settings.qbo_batch_min_backlog,
                         unjoined_exit_s=settings.consumer_unjoined_exit_s,
                         breaker=OutageBreaker(threshold=settings.consumer_outage_records,
                                               max_open_s=settings.consumer_outage_exit_s),
                         crash=parts.applier.executor.crash)
