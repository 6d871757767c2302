"""The consumer's port to QuickBooks Online: what the applier asks of it. ``QboClient`` implements it over HTTP;
``tests.fakes.InMemoryQbo`` implements it in-process on the sandbox's company model, for fast tests.

Every method raises the typed errors of consumer.errors (translated by consumer.qbo_faults), never a transport's
own exceptions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from consumer.errors import QboValidationFault
from consumer.qbo_queries import NaturalKey

GONE = ("610", "2030")  # QBO's Faults for an entity deleted, or an id it never had


class QboPort(Protocol):
    def create(self, entity: str, body: dict[str, Any], requestid: str) -> dict[str, Any]: ...

    def update(self, entity: str, body: dict[str, Any], requestid: str) -> dict[str, Any]: ...

    def read(self, entity: str, qbo_id: str) -> dict[str, Any]: ...

    def void(self, entity: str, qbo_id: str, sync_token: str, requestid: str) -> dict[str, Any]: ...

    def delete(self, entity: str, qbo_id: str, sync_token: str, requestid: str) -> dict[str, Any]: ...

    def query(self, sql: str, entity: str = "") -> list[dict[str, Any]]: ...

    def batch(self, items: list[dict[str, Any]], requestid: str | None = None) -> list[dict[str, Any]]: ...

    def reserve_batch(self) -> bool:
        """Take one of the realm's batch requests (QBO allows 40 a minute) if one is free now, for the next
        ``batch``; False when none is: the caller writes on its own meanwhile rather than wait for one."""

    def cdc(self, entities: list[str], changed_since: str) -> dict[str, Any]:
        """QBO's change data capture: what changed since an ISO time (QBO looks back 30 days at most)."""


def read_if_present(qbo: QboPort, entity: str, qbo_id: str) -> dict[str, Any] | None:
    """The entity, or None when QBO says it is gone or was never there (``GONE``); other Faults raise."""
    try:
        return qbo.read(entity, qbo_id)
    except QboValidationFault as fault:
        if fault.code in GONE:
            return None
        raise


QUERY_PAGE = 1000  # QBO answers at most 1,000 entities per query


def query_pages(qbo: QboPort, sql: str, entity: str, page: int = QUERY_PAGE) -> Iterator[list[dict[str, Any]]]:
    """The answer to ``sql`` (no STARTPOSITION or MAXRESULTS of its own) a page per query, until a short page."""
    start = 1
    while True:
        rows = qbo.query(f"{sql} STARTPOSITION {start} MAXRESULTS {page}", entity)
        yield rows
        if len(rows) < page:
            return
        start += page


def find_by_key(qbo: QboPort, key: NaturalKey) -> dict[str, Any] | None:
    """The entity ``key`` names, reading its query's answer a page at a time until a row matches. QBO answers
    100 rows to a query without MAXRESULTS: the 101st payment of a busy day, created by an attempt whose answer
    was lost, was never found, and a refund then skipped it as "never in QBO" (chaos, consumer kill -9)."""
    for rows in query_pages(qbo, key.query, key.entity):
        found = key.pick(rows)
        if found is not None:
            return found
    return None


def query_all(qbo: QboPort, entity: str, where: str = "", page: int = QUERY_PAGE) -> list[dict[str, Any]]:
    """Every entity of one type (``where``: a condition, e.g. a TxnDate range), a page per query."""
    condition = f" WHERE {where}" if where else ""
    return [row for rows in query_pages(qbo, f"SELECT * FROM {entity}{condition}", entity, page) for row in rows]
