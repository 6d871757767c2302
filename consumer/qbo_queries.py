"""Where QBO query text is built, and how an entity is found again by its natural key (DocNumber, name, marker)
after an attempt whose answer was lost. Pure: the text and the choice among rows, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consumer.mapping import carries


def quote(value: str) -> str:
    """A QBO query string literal: backslash-escape backslashes and single quotes."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def select_where(entity: str, **equal: str) -> str:
    """``SELECT * FROM <entity> WHERE a = 'x' AND b = 'y'``."""
    return f"SELECT * FROM {entity} WHERE " + " AND ".join(f"{k} = {quote(v)}" for k, v in equal.items())


def select_in(entity: str, field: str, values: list[str]) -> str:
    return f"SELECT * FROM {entity} WHERE {field} IN ({', '.join(quote(v) for v in values)})"


@dataclass(frozen=True)
class NaturalKey:
    """How to find the QBO entity a record's earlier attempt wrote: a query, then the row that carries the
    record's ``marker`` in ``note_field`` (or, for an invoice, belongs to ``or_customer``). Without a marker, the
    first row (a customer: QBO names are unique)."""

    entity: str
    query: str
    marker: str | None = None
    note_field: str = "PrivateNote"
    or_customer: str | None = None
    skip_voided: bool = False

    def pick(self, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        for row in rows:
            if self.skip_voided and row.get("Voided"):
                continue
            if self.marker is None or carries(row.get(self.note_field), self.marker):
                return row
            if self.or_customer is not None and (row.get("CustomerRef") or {}).get("value") == self.or_customer:
                return row
        return None
