"""Fixtures of the fault-injection suite."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from producer.database import scratch_database
from producer.trigger_capture import install_triggers
from tests.chaos.harness import RETRY_DELAYS, ChaosRun, brokers_of, storage_of
from tests.conftest import prepare_timetracker_db
from tests.pipeline import REALM, Pipeline, start_sandbox
from tests.services import private_postgres, unique

MakeRun = Callable[..., AbstractContextManager[ChaosRun]]


@pytest.fixture(scope="session")
def pg_server_url(pg_server_url: str) -> Iterator[str]:
    """#21: the invariant is proven on durable storage. The chaos scenarios run on the shared cluster when it has
    fsync, synchronous_commit and full_page_writes on, else on a durable cluster of their own."""
    if storage_of(pg_server_url) == "durable":
        yield pg_server_url
        return
    with private_postgres(durable=True) as pg:
        yield pg.url


@pytest.fixture
def make_run(pg_server_url: str, kafka_bootstrap: str) -> MakeRun:
    """``make_run(scenario, bootstrap=..., pg_url=..., kafka_client=..., settings=..., **sandbox_config)``: a fresh
    database with capture triggers, topics of its own, a sandbox; relay and consumers on ``kafka_client``
    (TTSYNC_KAFKA_CLIENT); ``settings`` override ttsync's (e.g. the topics' replication); everything the scenario
    started is stopped afterwards."""

    @contextmanager
    def factory(scenario: str, *, bootstrap: str | None = None, pg_url: str | None = None,
                kafka_client: str = "kafka-python", settings: dict[str, Any] | None = None,
                **sandbox_config: Any) -> Iterator[ChaosRun]:
        bootstrap = bootstrap or kafka_bootstrap
        settings = settings or {}
        with scratch_database(pg_url or pg_server_url, "chaos_") as db_url:
            engine = prepare_timetracker_db(db_url)
            with engine.begin() as conn:
                install_triggers(conn, source="chaos")
            config = {"requests_per_minute": 20000, "concurrent_requests": 20, "batch_requests_per_minute": 2000,
                      **sandbox_config}
            sandbox = start_sandbox(**config)
            token = requests.post(f"{sandbox.url}/__admin/tokens", json={"realm_id": REALM}, timeout=10).json()
            pipe = Pipeline(engine, db_url, bootstrap, unique("chaos"), unique("ttsync-chaos-"), sandbox,
                            overrides={"retry_topic_delays_s": RETRY_DELAYS, **settings},
                            refresh_token=token["refresh_token"])
            pipe.create_topics()
            slug = re.sub("[^a-z0-9]+", "-", scenario.lower())
            run = ChaosRun(scenario, pipe, Path(tempfile.mkdtemp(prefix=f"ttsync-chaos-{slug}-")),
                           # QBO's own limits (500 requests and 40 batches a minute) would make each scenario
                           # take many minutes; the throttling itself is proven by the 429-storm scenario and the
                           # consumer benchmark. A 429 without Retry-After waits 1 s here, not QBO's 60.
                           extra_env={"TTSYNC_QBO_THROTTLE_DEFAULT_WAIT_S": "1", "TTSYNC_QBO_REQUESTS_PER_MINUTE":
                                      "12000", "TTSYNC_QBO_BATCH_REQUESTS_PER_MINUTE": "1200",
                                      "TTSYNC_QBO_TIMEOUT_S": "5", "TTSYNC_KAFKA_CLIENT": kafka_client,
                                      **{f"TTSYNC_{k.upper()}": str(v) for k, v in settings.items()}},
                           storage=storage_of(db_url), brokers=brokers_of(bootstrap))
            try:
                yield run
            finally:
                run.stop_all()
                sandbox.stop()
                engine.dispose()

    return factory
