"""Fixtures of the fault-injection suite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

from tests.chaos.harness import ChaosRun, chaos_run, storage_of
from tests.services import private_postgres

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
    """``make_run(scenario, bootstrap=..., pg_url=..., kafka_client=..., settings=..., **sandbox_config)``:
    ``harness.chaos_run`` on the suite's broker and durable PostgreSQL unless told otherwise."""

    def factory(scenario: str, *, bootstrap: str | None = None, pg_url: str | None = None,
                **options: Any) -> AbstractContextManager[ChaosRun]:
        return chaos_run(scenario, bootstrap=bootstrap or kafka_bootstrap, pg_url=pg_url or pg_server_url,
                         **options)

    return factory
