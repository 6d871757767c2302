from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from producer import migrate
from producer.database import make_engine, scratch_database
from producer.timetracker_schema import TIMETRACKER_METADATA
from tests.services import kafka_service, postgres_service, unique


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with kafka_service() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    with postgres_service() as url:
        yield url


@pytest.fixture
def pg_database(pg_server_url: str) -> Iterator[str]:
    """A fresh database per test on the shared server: isolation without a new cluster."""
    with scratch_database(pg_server_url, "t_") as url:
        yield url


def prepare_timetracker_db(url: str) -> Engine:
    engine = make_engine(url)
    TIMETRACKER_METADATA.create_all(engine)
    migrate.upgrade(engine)
    return engine


@pytest.fixture
def pg_engine(pg_database: str) -> Iterator[Engine]:
    engine = prepare_timetracker_db(pg_database)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Any) -> Iterator[Engine]:
    engine = prepare_timetracker_db(f"sqlite:///{tmp_path / 'tt.sqlite3'}")
    yield engine
    engine.dispose()


@pytest.fixture
def topic_prefix() -> str:
    return unique("tt")


@pytest.fixture
def group_id() -> str:
    return f"ttsync-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_unique() -> Callable[[str], str]:
    return unique


@pytest.fixture
def pipeline(pg_engine: Engine, pg_database: str, kafka_bootstrap: str, topic_prefix: str,
             group_id: str) -> Iterator[Any]:
    from tests.pipeline import pipeline_on

    with pipeline_on(pg_engine, pg_database, kafka_bootstrap, topic_prefix, group_id) as pipe:
        yield pipe


CHAOS = "tests/chaos/"


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # an xdist hook: only called with workers (-n)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """The fault-injection scenarios go to one xdist worker as one unit and run one after the other, as they always
    have: two at once would starve each other's processes (each plays thousands of changes on the two cores) and
    change what a scenario proves, e.g. how often a consumer reaches its crash point. Every other test is a unit of
    its own, run by the other worker beside them. Not ``--dist loadgroup`` with an ``xdist_group`` mark: on pytest
    9.2 the group never reaches the scheduler and the marked tests are spread over the workers
    (pytest-dev/pytest-xdist#1386)."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ChaosApart(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return CHAOS if nodeid.startswith(CHAOS) else nodeid

    return ChaosApart(config, log)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On an xdist worker: hand the chaos table's rows to the controller, which prints and writes the table."""
    from tests.chaos.report import ROWS

    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["ttsync_chaos_rows"] = json.dumps(ROWS)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: only called with workers
def pytest_testnodedown(node: Any, error: Any) -> None:
    from tests.chaos.report import ROWS

    ROWS.extend(json.loads(getattr(node, "workeroutput", {}).get("ttsync_chaos_rows", "[]")))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.chaos.report import terminal_summary

    terminal_summary(terminalreporter)
