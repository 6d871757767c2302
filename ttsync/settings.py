"""Every setting ttsync reads, from the environment (prefix ``TTSYNC_``) or a ``.env`` file."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumer.lifecycle import SyncPolicy
from consumer.mapping import MappingOptions
from consumer.outage import OutageBreaker
from consumer.references import ResolverConfig
from consumer.retry_policy import RetryPolicy
from importer.apply_customer import CLIENT_FIELDS, ClientField
from producer.database import DEFAULT_SCHEMA, SCHEMA_ENV
from schemas.kafka_client import KafkaConnection, SaslMechanism, SecurityProtocol
from ttsync.qbo_sandbox.oauth import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET

# The defaults live with what they configure; the settings read them from there (held once).
_MAPPING, _RESOLVER, _POLICY, _RETRY = MappingOptions(), ResolverConfig(), SyncPolicy(), RetryPolicy()
DEFAULT_SQLITE_PATH = Path(".local") / "ttsync.sqlite3"
MIN_PROCESSED_EVENTS_DAYS = 8.0  # Kafka's default topic retention (log.retention.hours=168) and a day
PROCESSED_EVENTS_MARGIN_DAYS = 30.0


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Typed settings. Secrets are ``SecretStr`` so that printing a Settings never shows them."""

    model_config = SettingsConfigDict(env_prefix="TTSYNC_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_SQLITE_PATH}",
        description="TimeTracker database holding the outbox (PostgreSQL in production, SQLite for the demo)",
    )
    state_database_url: str | None = Field(
        default=None, description="Consumer state (processed events, entity map, tokens); defaults to database_url"
    )
    db_schema: str = Field(
        default=DEFAULT_SCHEMA, pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL schema of ttsync's tables and functions, apart from TimeTracker's (read from the "
                    "environment by every engine ttsync makes)")
    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap servers")
    kafka_security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (MSK, Confluent Cloud, Aiven, "
                                         "Strimzi TLS listeners); used by every Kafka client ttsync makes")
    kafka_sasl_mechanism: SaslMechanism | None = Field(default=None, description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512")
    kafka_sasl_username: str | None = Field(default=None, description="SASL user (the relay and the consumer "
                                            "should each have their own; see the README's ACLs)")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password")
    kafka_ssl_cafile: str | None = Field(default=None, description="CA bundle (PEM) the brokers' certificates "
                                         "are checked against (default: the system's)")
    kafka_ssl_certfile: str | None = Field(default=None, description="Client certificate (PEM), for mutual TLS")
    kafka_ssl_keyfile: str | None = Field(default=None, description="Client key (PEM), for mutual TLS")
    kafka_ssl_key_password: SecretStr | None = Field(default=None, description="Password of the client key")
    kafka_ssl_check_hostname: bool = Field(default=True, description="Check the broker certificate's host name")
    kafka_client: Literal["kafka-python", "confluent"] = Field(
        default="kafka-python", description="The Kafka client of the relay and the consumers: kafka-python (the "
                                            "default), or confluent (librdkafka, `pip install 'ttsync[librdkafka]'`:"
                                            " a backlog drains many times faster)")
    kafka_cluster_name: str = Field(default="default", description="The cluster_name label of the lag metrics "
                                    "(kafka-lag-exporter's)")
    topic_prefix: str = Field(default="timetracker", description="Topics are <prefix>.<aggregate type>")
    group_id: str = Field(default="ttsync-qbo", description="Consumer group of the QBO consumer")
    source: str = Field(default=_MAPPING.source, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
                        description="Name of the TimeTracker instance, put in every event and QBO marker")

    qbo_base_url: str = Field(default="http://127.0.0.1:8765", description="QBO API base URL (no /v3)")
    qbo_token_url: str = Field(
        default="http://127.0.0.1:8765/oauth2/v1/tokens/bearer", description="OAuth2 token endpoint"
    )
    qbo_authorize_url: str = Field(
        default="http://127.0.0.1:8765/connect/oauth2",
        description="OAuth authorize page (Intuit: https://appcenter.intuit.com/connect/oauth2)")
    qbo_sandbox: bool = Field(default=False, description="The QBO URLs are ttsync's own sandbox on another host "
                              "(compose): plain http and its built-in client secret are then allowed")
    qbo_client_id: str = Field(default=SANDBOX_CLIENT_ID, description="OAuth2 client id")
    qbo_client_secret: SecretStr = Field(default=SecretStr(SANDBOX_CLIENT_SECRET), description="OAuth2 secret")
    qbo_realm_id: str = Field(default="9130000000000001", description="QBO company (realm) id")
    qbo_refresh_token: SecretStr | None = Field(
        default=None, description="First refresh token; rotated ones are kept encrypted in the state database"
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Encrypts QBO tokens at rest: a Fernet key, or a passphrase of 16+ characters (scrypt, salted)")

    topic_partitions: int = Field(default=3, ge=1, description="Partitions of topics ttsync creates")
    topic_replication_factor: int = Field(default=1, ge=1, description="Replication of topics ttsync creates")
    topic_min_insync_replicas: int | None = Field(
        default=None, ge=1, description="min.insync.replicas of topics ttsync creates (None: the broker's default): "
        "with acks=all, a write needs this many replicas in sync, else the relay keeps its rows and retries")
    relay_batch_size: int = Field(default=2000, ge=1, le=10_000, description="Outbox rows claimed per batch")
    relay_poll_interval_s: float = Field(default=1.0, gt=0, description="Fallback poll when no NOTIFY arrives")
    relay_buckets: int = Field(default=16, ge=1, le=1024, description="Hash buckets that relays share out")
    dlq_retention_days: float = Field(default=365.0, description="Retention of the dead-letter topic ttsync creates "
                                      "(0 = forever); the broker's default of 7 days would expire dead letters")
    outbox_max_age_s: float = Field(default=300.0, gt=0, description="`outbox status --check` fails when the "
                                    "oldest unpublished row is older than this (a dead or starved relay)")
    outbox_retention_hours: float = Field(default=72.0, ge=0, description="Published rows kept this long")
    processed_events_retention_days: float = Field(
        default=0.0, ge=0, description="How long the consumer remembers an event it processed (its dedupe by event "
        "id and `dlq list`'s resolved state). 0 = as long as the dead-letter topic keeps records, plus "
        f"{PROCESSED_EVENTS_MARGIN_DAYS:g} days (forever when that topic keeps them forever); at least "
        f"{MIN_PROCESSED_EVENTS_DAYS:g} days (Kafka's default topic retention, 7 days, plus one)")

    metrics_port: int = Field(default=0, ge=0, le=65535,
                              description="Serve /metrics and /healthz on 127.0.0.1 at this port (0 = off)")
    metrics_host: str = Field(default="127.0.0.1",
                              description="Address of /metrics and /healthz (0.0.0.0 only inside a container)")
    qbo_minorversion: int = Field(default=75, description="minorversion sent on every QBO call")
    qbo_timeout_s: float = Field(default=30.0, gt=0, description="Timeout of one QBO HTTP call")
    qbo_requests_per_minute: int = Field(default=500, ge=1, description="The realm's QBO limit (500/min)")
    qbo_rate_fraction: float = Field(default=0.95, gt=0, le=1, description="Share of the limit ttsync may use")
    qbo_burst: int = Field(default=20, ge=1, description="Requests allowed back to back within the budget")
    qbo_batch_requests_per_minute: int = Field(default=40, ge=1, description="QBO's batch-request limit")
    qbo_batch_min_backlog: int = Field(
        default=10, ge=0, description="Use the batch endpoint when a poll brings this many records (0 = never)")
    qbo_throttle_default_wait_s: float = Field(default=60.0, description="Wait after a 429 without Retry-After")
    qbo_multicurrency: bool = Field(default=_MAPPING.multicurrency,
        description="Send CurrencyRef (the company uses multicurrency)")
    qbo_default_item: str = Field(default=_RESOLVER.default_item, description="QBO item (name or id) for invoice lines")
    qbo_bank_account: str = Field(default=_RESOLVER.bank_account, description="Account paying Cash/Check expenses")
    qbo_credit_card_account: str = Field(default=_RESOLVER.credit_card_account,
        description="Account paying CreditCard expenses")
    qbo_deposit_account: str | None = Field(default=_RESOLVER.deposit_account,
        description="Where payments go (default Undeposited)")
    expense_account_map: dict[str, str] = Field(
        default_factory=dict,
        description="Expense category -> QBO expense account (name or id), JSON; added to the defaults for all ten "
                    "TimeTracker categories (consumer.references.DEFAULT_EXPENSE_ACCOUNTS)")
    payment_method_map: dict[str, str] = Field(
        default_factory=dict, description="Extra expense payment_method -> Cash|Check|CreditCard, JSON")
    paying_account_map: dict[str, str] = Field(
        default_factory=dict, description="Expense payment_method -> QBO Bank or Credit Card account paying it "
                                          "(name or id), JSON; unmapped methods use the bank / credit card account")
    decode_html: bool = Field(default=_MAPPING.decode_html,
        description="Decode HTML entities (TimeTracker's forms store & as "
                                                        "&amp;) in names and text before they reach QBO")
    default_currency: str = Field(default=_MAPPING.default_currency, min_length=3, max_length=3,
                                  description="Currency of customers made from a client before any invoice "
                                              "(TimeTracker's Settings.currency)")
    auto_create_customers: bool = Field(default=_RESOLVER.auto_create_customers,
        description="Create a QBO customer not found by name")
    auto_create_vendors: bool = Field(default=_RESOLVER.auto_create_vendors,
        description="Create a QBO vendor not found by name")
    auto_create_items: bool = Field(default=_RESOLVER.auto_create_items,
        description="Create the invoice-line item when missing")
    auto_create_accounts: bool = Field(default=_RESOLVER.auto_create_accounts,
        description="Create expense accounts (else dead-letter)")
    sync_clients: bool = Field(default=_POLICY.sync_clients,
        description="Create/update a QBO customer for every client")
    adopt_legacy: bool = Field(default=True, description="Before creating a record that predates ttsync, look "
                               "for the entity TimeTracker's old connector made (one QBO query per such create)")
    invoice_sync_statuses: list[str] = Field(default_factory=lambda: sorted(_POLICY.invoice_sync),
                                             description="Invoice statuses that exist in QBO, JSON list")
    expense_sync_statuses: list[str] = Field(default_factory=lambda: sorted(_POLICY.expense_sync),
                                             description="Expense statuses that exist in QBO, JSON list")
    payment_sync_statuses: list[str] = Field(default_factory=lambda: sorted(_POLICY.payment_sync),
                                             description="Payment statuses that exist in QBO, JSON list")
    max_version_jump: int = Field(
        default=_POLICY.max_version_jump, ge=0,
        description="Dead-letter an event this many versions ahead of the last one applied "
        "(implausible: a forged or corrupted record would make later real changes look old); 0 = no limit")
    retry_inplace_attempts: int = Field(default=_RETRY.inplace_attempts, ge=0,
        description="In-place retries before retry topics")
    retry_backoff_s: float = Field(default=_RETRY.backoff_base_s, gt=0, description="First in-place backoff (doubles)")
    retry_backoff_max_s: float = Field(default=_RETRY.backoff_max_s, gt=0, description="Longest in-place backoff")
    retry_topic_delays_s: list[int] = Field(default_factory=lambda: list(_RETRY.topic_delays_s),
                                            description="Delays of the retry topics, JSON list")
    dependency_wait_max_hours: float = Field(
        default=_RETRY.dependency_wait_max_s / 3600, ge=0,
        description="A payment whose invoice is not in QBO yet keeps waiting in the retry topics (each "
        "wait about a fifth as long as it has waited so far) this long before it is dead-lettered (a backfill at "
        "QBO's rate limit can take hours)")
    # A backlog goes to QBO in batch requests of 30 drawn from one poll's records of a partition; the last batch of
    # a poll is partial. 500 fills them (a backfill drained at 1,469 writes/min where 100 gave 1,186, same run
    # size); a rebalance waits for the poll in hand, about 20 s of QBO's budget in batches.
    consumer_max_poll_records: int = Field(default=500, ge=1, description="Records per consumer poll")
    consumer_instance_id: str | None = Field(
        default=None, description="Static group membership (group.instance.id): a consumer restarted within its "
                                  "session keeps its partitions, no rebalance (one distinct id per replica, e.g. "
                                  "the pod name)")
    consumer_outage_records: int = Field(
        default=OutageBreaker.threshold, ge=1,
        description="Distinct records failing in a row with the same cause not tied to them "
        "(network, 5xx, token endpoint, unclassified) before the consumer pauses instead of forwarding them")
    consumer_outage_exit_s: float = Field(
        default=OutageBreaker.max_open_s, ge=0,
        description="Exit 1 (for a supervisor to restart it) when such an outage lasts this "
        "long; nothing is dead-lettered meanwhile (0 = wait for ever)")
    startup_wait_s: float = Field(
        default=600.0, ge=0,
        description="How long `ttsync relay` and `ttsync consume` wait at start for a database or Kafka broker "
        "that does not answer, retrying with backoff, before they exit 4; their one-shot forms (--once, "
        "--max-seconds) fail at once (0 = never wait)")
    consumer_unjoined_exit_s: float = Field(
        default=120.0, ge=0,
        description="Exit 1 (for a supervisor to restart it) when the group stays unjoined this long; 0 = never")

    sync_direction: Literal["export", "import", "both"] = Field(
        default="export", description="TimeTracker -> QBO (export), QBO -> TimeTracker (import: payments received "
        "in QBO), or both; the seed connector's three choices")
    qbo_webhook_verifier_token: SecretStr | None = Field(
        default=None, description="The Intuit app's webhook verifier token: `ttsync webhook` checks each "
        "delivery's intuit-signature with it (and refuses to start without it)")
    import_poll_interval_s: float = Field(
        default=60.0, ge=0, description="`ttsync import` asks QBO's change data capture what changed this often "
        "(the source of truth behind webhooks, and all there is without a public endpoint); 0 = webhooks only")
    import_invoice_void: Literal["cancel", "flag"] = Field(
        default="cancel", description="An invoice voided or deleted in QBO: cancel the TimeTracker invoice, or "
        "only flag it (log and /metrics)")
    import_client_fields: list[ClientField] = Field(
        default_factory=lambda: list(CLIENT_FIELDS),
        description="Client fields a QBO customer edit may change in TimeTracker, JSON list (the name stays "
        "TimeTracker's)")
    import_new_customers: bool = Field(default=False, description="A customer made in QBO becomes a TimeTracker "
                                       "client")
    webhook_host: str = Field(default="127.0.0.1", description="Address `ttsync webhook` listens on (behind your "
                              "TLS proxy; 0.0.0.0 inside a container)")
    webhook_port: int = Field(default=8977, ge=0, le=65535, description="Port of `ttsync webhook`")
    webhook_max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Larger deliveries are refused "
                                        "(413) before they are read")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level")
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto = console on a terminal, JSON otherwise"
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _qbo_is_reached_safely(self) -> Settings:
        """The defaults name the local sandbox. Anything else must be https, with a client secret of its own:
        a token or an invoice must never cross a network in clear, nor an app authenticate with a public secret."""
        local = self.qbo_sandbox or all(_is_loopback(u) for u in (self.qbo_base_url, self.qbo_token_url))
        if not local:
            for name in ("qbo_base_url", "qbo_token_url", "qbo_authorize_url"):
                url = urlsplit(getattr(self, name))
                if url.scheme != "https" and not _is_loopback(getattr(self, name)):
                    raise ValueError(f"TTSYNC_{name.upper()} must be https:// ({url.scheme}:// would carry tokens "
                                     "and books in clear); plain http is for ttsync's sandbox only "
                                     "(TTSYNC_QBO_SANDBOX=true)")
            if self.qbo_client_secret.get_secret_value() == SANDBOX_CLIENT_SECRET:
                raise ValueError("TTSYNC_QBO_CLIENT_SECRET is the local sandbox's published secret: set your "
                                 "Intuit app's secret")
        return self

    @model_validator(mode="after")
    def _processed_events_outlive_redelivery(self) -> Settings:
        """An event forgotten while Kafka can still deliver it again (a topic's retention, a dead letter replayed)
        would lose its dedupe by id (versions still guard it) and show a resolved dead letter as open again."""
        days = self.processed_events_retention_days
        if days and (days < MIN_PROCESSED_EVENTS_DAYS or 0 < self.dlq_retention_days > days):
            raise ValueError(f"TTSYNC_PROCESSED_EVENTS_RETENTION_DAYS={days:g} is shorter than Kafka may redeliver an "
                             f"event: at least {MIN_PROCESSED_EVENTS_DAYS:g} days and at least "
                             f"TTSYNC_DLQ_RETENTION_DAYS ({self.dlq_retention_days:g}); 0 chooses for you")
        return self

    @property
    def processed_events_retention(self) -> dt.timedelta | None:
        """How long processed events are kept; None: for ever (the dead-letter topic keeps its records for ever)."""
        if self.processed_events_retention_days:
            return dt.timedelta(days=self.processed_events_retention_days)
        if self.dlq_retention_days <= 0:
            return None
        return dt.timedelta(days=max(self.dlq_retention_days, MIN_PROCESSED_EVENTS_DAYS) + PROCESSED_EVENTS_MARGIN_DAYS)

    @model_validator(mode="after")
    def _replicas_can_be_in_sync(self) -> Settings:
        if self.topic_min_insync_replicas and self.topic_min_insync_replicas > self.topic_replication_factor:
            raise ValueError(f"TTSYNC_TOPIC_MIN_INSYNC_REPLICAS={self.topic_min_insync_replicas} is more than "
                             f"TTSYNC_TOPIC_REPLICATION_FACTOR={self.topic_replication_factor}: no write could succeed")
        return self

    @property
    def topic_configs(self) -> dict[str, str]:
        """What every topic ttsync creates is configured with: its durability. Unclean leader election stays off
        (Kafka's default, set so that a broker configured otherwise cannot elect a replica that lost writes)."""
        configs = {"unclean.leader.election.enable": "false"}
        if self.topic_min_insync_replicas:
            configs["min.insync.replicas"] = str(self.topic_min_insync_replicas)
        return configs

    @model_validator(mode="after")
    def _kafka_connection_is_sound(self) -> Settings:
        self.kafka.check()  # KafkaConfigError is a ValueError: pydantic reports it as a validation error
        return self

    @property
    def kafka(self) -> KafkaConnection:
        """How every ttsync Kafka client connects (bootstrap servers and security)."""
        return KafkaConnection(
            bootstrap_servers=self.kafka_bootstrap_servers, security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism, sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None,
            ssl_cafile=self.kafka_ssl_cafile, ssl_certfile=self.kafka_ssl_certfile, ssl_keyfile=self.kafka_ssl_keyfile,
            ssl_key_password=self.kafka_ssl_key_password.get_secret_value() if self.kafka_ssl_key_password else None,
            ssl_check_hostname=self.kafka_ssl_check_hostname)

    @property
    def effective_state_database_url(self) -> str:
        return self.state_database_url or self.database_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    # TTSYNC_ENV_FILE: one more file of settings, read after ./.env (compose hands the sandbox's token over so);
    # the environment still wins over both.
    extra = os.environ.get("TTSYNC_ENV_FILE")
    settings = Settings(_env_file=(".env", extra) if extra else ".env")  # type: ignore[call-arg]
    # Engines read the schema from the environment (producer.database.ttsync_schema): one from a .env file too.
    os.environ.setdefault(SCHEMA_ENV, settings.db_schema)
    return settings
