"""The whole pipeline for end-to-end tests: TimeTracker tables with capture triggers, the relay, a real
broker, the consumer group and the QBO sandbox."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests
from sqlalchemy import Engine, text

from consumer.group_consumer import ConsumerStats, GroupConsumer
from schemas.kafka_client import KafkaConnection
from ttsync.qbo_sandbox.server import SandboxConfig, SandboxServer
from ttsync.settings import Settings
from ttsync.wiring import build_consumer, build_parts, build_relay, ensure_consumer_topics, ensure_relay_topics

REALM = "9130000000000001"


@dataclass
class Pipeline:
    engine: Engine
    db_url: str
    bootstrap: str
    prefix: str
    group: str
    sandbox: SandboxServer
    overrides: dict[str, Any] = field(default_factory=dict)
    refresh_token: str = ""
    relay_kafka: KafkaConnection | None = None
    """The relay's own connection when it differs from the consumer's (a secured broker: its own principal)."""

    def settings(self, **extra: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": self.db_url, "kafka_bootstrap_servers": self.bootstrap, "topic_prefix": self.prefix,
            "group_id": self.group, "qbo_base_url": self.sandbox.url, "qbo_token_url": self.sandbox.token_url,
            "qbo_realm_id": REALM, "qbo_refresh_token": self.refresh_token, "secret_key": "pipeline-test-key",
            "retry_topic_delays_s": [1, 2], "retry_backoff_s": 0.05, "retry_backoff_max_s": 0.2,
            "qbo_requests_per_minute": 6000, "qbo_throttle_default_wait_s": 1.0,
            **self.overrides, **extra,
        }
        return Settings(**values)

    def env(self, **extra: str) -> dict[str, str]:
        s = self.settings()
        env = {**os.environ, "TTSYNC_DATABASE_URL": self.db_url, "TTSYNC_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
               "TTSYNC_TOPIC_PREFIX": self.prefix, "TTSYNC_GROUP_ID": self.group,
               "TTSYNC_QBO_BASE_URL": self.sandbox.url, "TTSYNC_QBO_TOKEN_URL": self.sandbox.token_url,
               "TTSYNC_QBO_REALM_ID": REALM, "TTSYNC_QBO_REFRESH_TOKEN": self.refresh_token,
               "TTSYNC_SECRET_KEY": "pipeline-test-key", "TTSYNC_RETRY_TOPIC_DELAYS_S": "[1, 2]",
               "TTSYNC_RETRY_BACKOFF_S": "0.05", "TTSYNC_QBO_REQUESTS_PER_MINUTE": str(s.qbo_requests_per_minute),
               "TTSYNC_LOG_FORMAT": "json", **extra}
        return env

    def create_topics(self) -> None:
        s = self.settings()
        ensure_relay_topics(s, self.relay_kafka)
        ensure_consumer_topics(s)

    def relay(self) -> int:
        relay = build_relay(self.settings(), self.engine, kafka=self.relay_kafka)
        try:
            return relay.run(idle_exit=True).published
        finally:
            relay.publisher.close()

    def consumer(self, **settings: Any) -> GroupConsumer:
        s = self.settings(**settings)
        return build_consumer(s, build_parts(s), session_timeout_ms=6000)

    def consume_until(self, done: Callable[[ConsumerStats], bool], timeout_s: float = 60, **settings: Any
                      ) -> ConsumerStats:
        stats = self._run_consumer(done, timeout_s, **settings)
        assert done(stats), f"consumer did not get there in {timeout_s}s: {stats}"
        return stats

    def _run_consumer(self, until: Callable[[ConsumerStats], bool], timeout_s: float, **settings: Any
                      ) -> ConsumerStats:
        """A consumer of this pipeline's group, run until ``until`` holds or ``timeout_s`` passes, then closed."""
        worker = self.consumer(**settings)
        try:
            return worker.run(until=until, max_seconds=timeout_s)
        finally:
            worker.close()

    def unsettled_events(self) -> int:
        """How many of the outbox's events this group has recorded no outcome for: neither processed (applied,
        skipped, adopted) nor dead-lettered. Distinct events, unlike the consumer's stats, which count a record
        read again after a rebalance a second time (as a duplicate)."""
        with self.engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT COUNT(*) FROM ttsync_outbox o WHERE NOT EXISTS (SELECT 1 FROM ttsync_processed_events p "
                "WHERE p.consumer_group = :g AND p.event_id = CAST(o.id AS text)) AND NOT EXISTS (SELECT 1 FROM "
                "ttsync_dead_lettered d WHERE d.consumer_group = :g AND d.event_id = CAST(o.id AS text))"),
                {"g": self.group}).scalar_one())

    def consume_until_settled(self, timeout_s: float = 60, **settings: Any) -> ConsumerStats:
        """Consume until every event of the outbox has an outcome (``unsettled_events`` is 0), asked of the
        database at most once a second.

        Only for outboxes whose events all decode: a record dead-lettered before it decodes (a payload that misses
        a TimeTracker column, say) leaves no row in ``ttsync_dead_lettered``, so it would count as unsettled."""
        asked = {"at": 0.0, "left": -1}

        def settled(_stats: ConsumerStats) -> bool:
            if time.monotonic() - asked["at"] >= 1.0:
                asked["at"], asked["left"] = time.monotonic(), self.unsettled_events()
            return asked["left"] == 0

        stats = self._run_consumer(settled, timeout_s, **settings)
        left = self.unsettled_events()  # asked afresh: the last answer of ``settled`` may be a second old
        assert left == 0, f"{left} events without an outcome after {timeout_s}s: {stats}"
        return stats

    def consume_process(self, **env: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "ttsync", "consume", "--no-create-topics"],
                                env=self.env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    # -- the sandbox's view ----------------------------------------------------------------------------

    def admin(self, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"{self.sandbox.url}/__admin/{path}"
        resp = requests.post(url, json=body, timeout=10) if body is not None else requests.get(url, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def qbo(self, entity: str) -> list[dict[str, Any]]:
        return self.admin(f"realms/{REALM}/entities?type={entity}")[entity]

    def qbo_deleted(self, entity: str) -> list[dict[str, Any]]:
        return self.admin(f"realms/{REALM}/entities?type={entity}")["deleted"][entity]

    def writes_per_requestid(self) -> dict[str, int]:
        return self.admin(f"requestids?realm={REALM}")


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def start_sandbox(**config: Any) -> SandboxServer:
    return SandboxServer(SandboxConfig(port=0, **config)).start()


@contextmanager
def pipeline_on(engine: Engine, db_url: str, bootstrap: str, prefix: str, group: str, *,
                sandbox: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
                relay_kafka: KafkaConnection | None = None) -> Iterator[Pipeline]:
    """Capture triggers on the database, a sandbox (``sandbox``: its config), a refresh token, the topics."""
    from producer.trigger_capture import install_triggers

    with engine.begin() as conn:
        install_triggers(conn, source="tt-test")
    server = start_sandbox(**{"requests_per_minute": 6000, "concurrent_requests": 20, **(sandbox or {})})
    token = requests.post(f"{server.url}/__admin/tokens", json={"realm_id": REALM}, timeout=10).json()
    pipe = Pipeline(engine, db_url, bootstrap, prefix, group, server, overrides=dict(overrides or {}),
                    refresh_token=token["refresh_token"], relay_kafka=relay_kafka)
    pipe.create_topics()
    try:
        yield pipe
    finally:
        server.stop()
