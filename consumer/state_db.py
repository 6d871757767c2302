"""Where a failure of the state database becomes ``StateUnavailable`` (consumer.errors): every consumer store
(entity map and processed events, tokens, the shared rate budget) opens its connections here. A lost connection
is the service failing, never the record: the retry policy waits in place for the database to come back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc

from consumer.errors import StateUnavailable


@contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError) as exc:
        raise StateUnavailable(f"state database unavailable: {type(exc).__name__}: {str(exc)[:300]}") from exc
    except sa_exc.DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        raise StateUnavailable(f"state database connection lost: {str(exc)[:300]}") from exc


@contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    """A connection for reads. On PostgreSQL in autocommit: each statement sees the data committed when it starts,
    as under READ COMMITTED, without a BEGIN before the first statement and a ROLLBACK when the pool takes the
    connection back. Those were two of a read's three round trips, and the consumer makes several reads per record.
    SQLite (the demo) keeps its default: it has no round trips to save, and the README's demo once ended early in a
    full run with its reads in autocommit (rehearsal of 76ae9a8), a cause not yet understood."""
    options = {"isolation_level": "AUTOCOMMIT"} if engine.dialect.name == "postgresql" else {}
    with translated(), engine.connect().execution_options(**options) as conn:
        yield conn


@contextmanager
def autocommit(engine: Engine) -> Iterator[Connection]:
    """A connection on which every statement commits on its own: for a write that is one statement and needs no
    transaction around it (the shared rate budget's take), one round trip instead of BEGIN, the statement and
    COMMIT."""
    with translated(), engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        yield conn


@contextmanager
def begin(engine: Engine) -> Iterator[Connection]:
    """A transaction, committed when the block ends without an exception."""
    with translated(), engine.begin() as conn:
        yield conn
