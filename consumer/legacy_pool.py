"""The entities TimeTracker's old QuickBooks connector left in QBO, read in bulk for adoption.

Taking over from the old connector, a create first looks for the entity the connector made for the same record
(same customer, date and amount: it stored no DocNumber). One query per create halved a backfill's speed. Here
the candidates are read a calendar year of ``TxnDate`` at a time, a page of 1,000 per query, kept for a while,
and matched in memory: a backfill of thousands of records costs a handful of queries. An entity being adopted is
claimed by its record at once, so no second record of this consumer can take it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from consumer.mapping import MARKER_RE
from consumer.qbo_port import QboPort, query_all
from consumer.qbo_queries import quote

POOL_TTL_S = 600.0  # an entity made in QBO meanwhile (by hand) is seen after this long at most


class LegacyPool:
    def __init__(self, qbo: QboPort, *, ttl_s: float = POOL_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.qbo = qbo
        self.ttl_s = ttl_s
        self._clock = clock
        self._years: dict[tuple[str, str], tuple[float, list[dict[str, Any]]]] = {}
        self._claims: dict[tuple[str, str], str] = {}  # (entity, QBO id) -> the record adopting it

    def candidates(self, entity: str, txn_date: str, owner: str, **refs: str) -> list[dict[str, Any]]:
        """The unmarked ``entity`` rows of this date whose reference fields (``CustomerRef=...``) hold these ids,
        and that no record but ``owner`` (``invoice:12``) claimed."""
        return [row for row in self._year(entity, txn_date[:4]) if row.get("TxnDate") == txn_date
                and all((row.get(field) or {}).get("value") == value for field, value in refs.items())
                and self._free(entity, row, owner)]

    def by_id(self, entity: str, txn_date: str, qbo_id: str, owner: str) -> dict[str, Any] | None:
        """The unmarked ``entity`` ``qbo_id`` among the candidates of ``txn_date``'s year, unless another record
        claimed it."""
        return next((row for row in self._year(entity, txn_date[:4]) if str(row.get("Id")) == qbo_id
                     and self._free(entity, row, owner)), None)

    def _free(self, entity: str, row: dict[str, Any], owner: str) -> bool:
        """Unclaimed, or claimed by ``owner`` itself."""
        return self._claims.get((entity, str(row.get("Id"))), owner) == owner

    def claim(self, entity: str, row: dict[str, Any], owner: str) -> None:
        """``owner`` adopts ``row``: no other record may match it. The owner still may, when its adoption failed
        and is tried again (a stale SyncToken in a batch, say)."""
        self._claims[(entity, str(row.get("Id")))] = owner

    def _year(self, entity: str, year: str) -> list[dict[str, Any]]:
        key = (entity, year)
        held = self._years.get(key)
        if held is None or self._clock() - held[0] > self.ttl_s:
            rows = query_all(self.qbo, entity, f"TxnDate >= {quote(f'{year}-01-01')} AND "
                                               f"TxnDate <= {quote(f'{year}-12-31')}")
            # ttsync's own (marked) are never a legacy candidate: only the connector's stay.
            held = (self._clock(), [r for r in rows if not MARKER_RE.search(r.get("PrivateNote") or "")])
            self._years[key] = held
        return held[1]
