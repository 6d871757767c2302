"""What an aggregate's state looks like in an event, built from TimeTracker's rows.

One description (``AGGREGATES``) drives both capture paths, so they cannot drift apart:
``snapshot()`` reads it with SQLAlchemy Core (SQLite and PostgreSQL), and ``snapshot_function_sql()``
compiles it to the PL/pgSQL the database triggers call. Values are encoded the same way in both: money as
decimal strings, dates and timestamps as ISO 8601 text, JSON columns as JSON.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import Connection, text

from schemas.contract import MISSING_COLUMNS

MONEY_SCALE = Decimal("0.01")  # every money column of TimeTracker is Numeric(p, 2)

Kind = Literal["int", "text", "money", "date", "ts", "json", "bool"]


@dataclass(frozen=True)
class Columns:
    table: str
    columns: tuple[tuple[str, Kind], ...]


@dataclass(frozen=True)
class Child:
    """Rows of another table that belong to the aggregate (invoice items), as a list ordered by id."""

    name: str
    of: Columns
    fk: str


@dataclass(frozen=True)
class Embed:
    """One row referenced by the root (the invoice's client), as an object."""

    name: str
    of: Columns
    root_fk: str


@dataclass(frozen=True)
class Lookup:
    """One column of a referenced row, flattened into the root (the payment's invoice number)."""

    name: str
    table: str
    root_fk: str
    column: str


@dataclass(frozen=True)
class Tally:
    """A sum, count or latest value over the rows of another table that point at the root (the invoice's
    completed payments, the client's latest invoice currency), flattened into the root as money (sum), an
    integer (count) or text (latest: the value of the row with the highest id)."""

    name: str
    table: str
    fk: str
    function: Literal["sum", "count", "latest"]
    column: str = "id"
    only: tuple[str, str] | None = None  # (column, value): count only rows where column = value


@dataclass(frozen=True)
class Aggregate:
    type: str
    root: Columns
    children: tuple[Child, ...] = ()
    embeds: tuple[Embed, ...] = ()
    lookups: tuple[Lookup, ...] = ()
    tallies: tuple[Tally, ...] = ()
    # TimeTracker table -> column holding this aggregate's id, for every table whose change is a change of
    # this aggregate.
    touched_by: dict[str, str] = field(default_factory=dict)


CLIENT = Columns(
    "clients",
    (
        ("id", "int"), ("name", "text"), ("contact_person", "text"), ("email", "text"), ("phone", "text"),
        ("address", "text"), ("default_hourly_rate", "money"), ("status", "text"), ("custom_fields", "json"),
        ("created_at", "ts"), ("updated_at", "ts"),
    ),
)
INVOICE_ITEM = Columns(
    "invoice_items",
    (
        ("id", "int"), ("invoice_id", "int"), ("description", "text"), ("quantity", "money"),
        ("unit_price", "money"), ("total_amount", "money"), ("time_entry_ids", "text"), ("created_at", "ts"),
    ),
)
INVOICE = Columns(
    "invoices",
    (
        ("id", "int"), ("invoice_number", "text"), ("project_id", "int"), ("client_id", "int"),
        ("client_name", "text"), ("client_email", "text"), ("client_address", "text"), ("issue_date", "date"),
        ("due_date", "date"), ("status", "text"), ("subtotal", "money"), ("tax_rate", "money"),
        ("tax_amount", "money"), ("total_amount", "money"), ("currency_code", "text"), ("notes", "text"),
        ("terms", "text"), ("amount_paid", "money"), ("payment_status", "text"),
        ("payment_date", "date"), ("payment_reference", "text"),
        ("integration_metadata", "json"), ("created_at", "ts"), ("updated_at", "ts"),
    ),
)
# TimeTracker's Invoice.calculate_totals() adds these to the items: extra goods linked to the invoice and
# every expense linked to it (amount + tax). Only the columns that shape the invoice, so that an expense's
# approval does not look like a change of its invoice.
EXTRA_GOOD = Columns(
    "extra_goods",
    (
        ("id", "int"), ("invoice_id", "int"), ("name", "text"), ("description", "text"), ("category", "text"),
        ("quantity", "money"), ("unit_price", "money"), ("total_amount", "money"), ("sku", "text"),
    ),
)
LINKED_EXPENSE = Columns(
    "expenses",
    (
        ("id", "int"), ("invoice_id", "int"), ("title", "text"), ("description", "text"), ("category", "text"),
        ("amount", "money"), ("tax_amount", "money"), ("expense_date", "date"),
    ),
)
EXPENSE = Columns(
    "expenses",
    (
        ("id", "int"), ("user_id", "int"), ("project_id", "int"), ("client_id", "int"), ("title", "text"),
        ("description", "text"), ("category", "text"), ("amount", "money"), ("currency_code", "text"),
        ("tax_amount", "money"), ("tax_rate", "money"), ("payment_method", "text"), ("payment_date", "date"),
        ("status", "text"), ("approved_by", "int"), ("approved_at", "ts"), ("rejection_reason", "text"),
        ("billable", "bool"), ("reimbursable", "bool"), ("invoiced", "bool"), ("invoice_id", "int"),
        ("expense_date", "date"), ("receipt_number", "text"), ("vendor", "text"), ("notes", "text"),
        ("tags", "text"), ("integration_metadata", "json"), ("created_at", "ts"), ("updated_at", "ts"),
    ),
)
PAYMENT = Columns(
    "payments",
    (
        ("id", "int"), ("invoice_id", "int"), ("amount", "money"), ("currency", "text"),
        ("payment_date", "date"), ("method", "text"), ("reference", "text"), ("notes", "text"),
        ("status", "text"), ("gateway_transaction_id", "text"), ("gateway_fee", "money"),
        ("net_amount", "money"), ("created_at", "ts"), ("updated_at", "ts"),
    ),
)

ROOT_ID = 'r."id"'
MISSING = MISSING_COLUMNS  # in a state: columns ttsync reads that TimeTracker's row did not have

AGGREGATES: dict[str, Aggregate] = {
    "invoice": Aggregate(
        "invoice",
        INVOICE,
        children=(
            Child("items", INVOICE_ITEM, "invoice_id"),
            Child("extra_goods", EXTRA_GOOD, "invoice_id"),
            Child("expenses", LINKED_EXPENSE, "invoice_id"),
        ),
        embeds=(Embed("client", CLIENT, "client_id"),),
        tallies=(
            # What payment rows account for of amount_paid ("mark as paid" writes none), and whether it was
            # ever e-mailed (a draft turned overdue by the daily job never was).
            Tally("payments_completed", "payments", "invoice_id", "sum", "amount", ("status", "completed")),
            Tally("emails_sent", "invoice_emails", "invoice_id", "count"),
        ),
        touched_by={"invoices": "id", "invoice_items": "invoice_id", "extra_goods": "invoice_id",
                    "expenses": "invoice_id", "payments": "invoice_id"},
    ),
    "expense": Aggregate("expense", EXPENSE, touched_by={"expenses": "id"}),
    "payment": Aggregate(
        "payment",
        PAYMENT,
        lookups=(Lookup("invoice_number", "invoices", "invoice_id", "invoice_number"),),
        touched_by={"payments": "id"},
    ),
    # A QBO customer's currency is fixed at its creation: a client with invoices already (a backfill) gets
    # theirs; a new one TTSYNC_DEFAULT_CURRENCY.
    "client": Aggregate("client", CLIENT, touched_by={"clients": "id"},
                        tallies=(Tally("invoice_currency", "invoices", "client_id", "latest", "currency_code"),)),
}

TABLE_TO_AGGREGATES: dict[str, list[tuple[str, str]]] = {}
for _agg in AGGREGATES.values():
    for _table, _col in _agg.touched_by.items():
        TABLE_TO_AGGREGATES.setdefault(_table, []).append((_agg.type, _col))


def columns_read() -> dict[str, set[str]]:
    """Every TimeTracker column ttsync reads, per table (what ``ttsync capture check`` compares with)."""
    need: dict[str, set[str]] = {}
    for agg in AGGREGATES.values():
        for cols in (agg.root, *(c.of for c in agg.children), *(e.of for e in agg.embeds)):
            need.setdefault(cols.table, set()).update(name for name, _ in cols.columns)
        for child in agg.children:
            need[child.of.table].add(child.fk)
        for lookup in agg.lookups:
            need.setdefault(lookup.table, set()).update({"id", lookup.column})
        for tally in agg.tallies:
            need.setdefault(tally.table, set()).update({"id", tally.fk, tally.column, *tally.only[:1]}
                                                       if tally.only else {"id", tally.fk, tally.column})
        for table, column in agg.touched_by.items():
            need.setdefault(table, set()).add(column)
    return need


def schema_differences(conn: Connection) -> list[str]:
    """What the live database lacks of what ttsync reads: ``table.column`` (or ``table``), sorted. Empty when
    capture can read everything (run after every TimeTracker upgrade: ``ttsync capture check``)."""
    from sqlalchemy import inspect

    inspector = inspect(conn)
    tables = set(inspector.get_table_names())
    out = []
    for table, columns in sorted(columns_read().items()):
        if table not in tables:
            out.append(table)
            continue
        have = {c["name"] for c in inspector.get_columns(table)}
        out += [f"{table}.{c}" for c in sorted(columns - have)]
    return out


# --- Python side --------------------------------------------------------------------------------------


def _encode(kind: Kind, value: Any) -> Any:
    if value is None:
        return None
    if kind == "money":
        if isinstance(value, Decimal):
            return str(value)
        # SQLite hands back int/float for NUMERIC: restore TimeTracker's scale of 2, as PostgreSQL prints it.
        return str(Decimal(str(value)).quantize(MONEY_SCALE))
    if kind == "date":
        return value.isoformat() if isinstance(value, dt.date) else str(value)
    if kind == "ts":
        return value.isoformat() if isinstance(value, dt.datetime) else str(value)
    if kind == "json":
        return json.loads(value) if isinstance(value, str) else value
    if kind == "bool":
        return bool(value)
    if kind == "int":
        return int(value)
    return value


def _select(cols: Columns, where: str) -> Any:
    # Every column, picked by name afterwards: a column TimeTracker renamed reads as missing, not as an error
    # in TimeTracker's own transaction.
    return text(f'SELECT * FROM "{cols.table}" WHERE {where}')


def _row_dict(cols: Columns, row: Any) -> dict[str, Any]:
    values = row._mapping
    out = {name: _encode(kind, values.get(name)) for name, kind in cols.columns}
    missing = [f"{cols.table}.{name}" for name, _ in cols.columns if name not in values]
    if missing:
        out[MISSING] = missing
    return out


def snapshot(conn: Connection, aggregate_type: str, aggregate_id: str | int) -> dict[str, Any] | None:
    """The aggregate's current state as its event payload, or None when its root row does not exist."""
    agg = AGGREGATES[aggregate_type]
    row = conn.execute(_select(agg.root, '"id" = :id'), {"id": int(aggregate_id)}).first()
    if row is None:
        return None
    state = _row_dict(agg.root, row)
    for child in agg.children:
        stmt = _select(child.of, f'"{child.fk}" = :id ORDER BY "id"')
        state[child.name] = [_row_dict(child.of, r) for r in conn.execute(stmt, {"id": int(aggregate_id)})]
    for embed in agg.embeds:
        ref = state.get(embed.root_fk)
        found = conn.execute(_select(embed.of, '"id" = :id'), {"id": ref}).first() if ref is not None else None
        state[embed.name] = _row_dict(embed.of, found) if found is not None else None
    for lookup in agg.lookups:
        ref = state.get(lookup.root_fk)
        found = conn.execute(text(f'SELECT * FROM "{lookup.table}" WHERE "id" = :id'), {"id": ref}).first() \
            if ref is not None else None
        state[lookup.name] = found._mapping.get(lookup.column) if found is not None else None
    for tally in agg.tallies:
        state[tally.name] = _tally(conn, tally, int(aggregate_id))
    return state


def _tally(conn: Connection, tally: Tally, root_id: int) -> Any:
    """Python's reading of a tally: the rows by their foreign key, the rest by name from the row (a column
    TimeTracker renamed reads as None)."""
    rows = [r._mapping for r in conn.execute(
        text(f'SELECT * FROM "{tally.table}" WHERE "{tally.fk}" = :id ORDER BY "id"'), {"id": root_id})]
    if tally.only is not None:
        rows = [r for r in rows if r.get(tally.only[0]) == tally.only[1]]
    if tally.function == "count":
        return len(rows)
    if tally.function == "latest":
        return rows[-1].get(tally.column) if rows else None
    return _encode("money", sum((Decimal(str(r.get(tally.column) or 0)) for r in rows), Decimal("0"))
                   .quantize(MONEY_SCALE))


def _tally_sql(tally: Tally) -> str:
    """The trigger side's reading of a tally; the value and condition columns come from the row's
    ``to_jsonb`` (NULL, never an error, when TimeTracker renamed them)."""
    cond = f" AND to_jsonb(t) ->> '{tally.only[0]}' = '{tally.only[1]}'" if tally.only else ""
    where = f'WHERE t."{tally.fk}" = {ROOT_ID}{cond}'
    value = f"(to_jsonb(t) ->> '{tally.column}')"
    if tally.function == "latest":
        return f'SELECT {value} FROM "{tally.table}" t {where} ORDER BY t."id" DESC LIMIT 1'
    if tally.function == "count":
        return f'SELECT COUNT(*) FROM "{tally.table}" t {where}'
    return f'SELECT COALESCE(SUM({value}::numeric), 0)::numeric(14,2)::text FROM "{tally.table}" t {where}'


# --- PostgreSQL side ----------------------------------------------------------------------------------


def _pg_value(j: str, name: str, kind: Kind) -> str:
    """One column read from the row's ``to_jsonb`` (``j``): a column TimeTracker renamed or dropped reads as
    NULL instead of failing TimeTracker's own statement (a sync tool must never take its host's writes down)."""
    if kind == "money":
        return f"(({j} ->> '{name}')::numeric)::text"
    if kind == "date":
        return f"to_char(({j} ->> '{name}')::date, 'YYYY-MM-DD')"
    if kind == "ts":
        return f"to_char(({j} ->> '{name}')::timestamp, 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"
    return f"({j} -> '{name}')"


def _pg_object(cols: Columns, j: str) -> str:
    # jsonb_build_object takes at most 100 arguments: build in chunks and concatenate.
    pairs = [f"'{name}', {_pg_value(j, name, kind)}" for name, kind in cols.columns]
    chunks = [pairs[i : i + 40] for i in range(0, len(pairs), 40)]
    names = ", ".join(f"'{name}'" for name, _ in cols.columns)
    # The columns the row lacks, named, so that the consumer dead-letters the event with the reason.
    missing = (f"CASE WHEN {j} ?& ARRAY[{names}] THEN '{{}}'::jsonb ELSE jsonb_build_object('{MISSING}', "
               f"(SELECT jsonb_agg('{cols.table}.' || k) FROM unnest(ARRAY[{names}]) k WHERE NOT {j} ? k)) END")
    return " || ".join([*(f"jsonb_build_object({', '.join(chunk)})" for chunk in chunks), missing])


def snapshot_function_sql(agg: Aggregate) -> str:
    """``ttsync_snapshot_<type>(id bigint) RETURNS jsonb``, the trigger-side twin of ``snapshot()``. Every
    column but the ids and the foreign keys of child rows (which the joins need) is read from ``to_jsonb`` of
    its row, so that a TimeTracker upgrade that renames one cannot fail TimeTracker's transactions."""
    # Each row becomes jsonb once (a LATERAL per table), and every value is read from that.
    root = "rj.j"
    parts = [_pg_object(agg.root, root)]
    for child in agg.children:
        parts.append(
            f"jsonb_build_object('{child.name}', COALESCE((SELECT jsonb_agg({_pg_object(child.of, 'cj.j')} "
            f'ORDER BY c."id") FROM "{child.of.table}" c CROSS JOIN LATERAL to_jsonb(c) AS cj(j) '
            f'WHERE c."{child.fk}" = r."id"), \'[]\'::jsonb))'
        )
    for embed in agg.embeds:
        parts.append(
            f"jsonb_build_object('{embed.name}', (SELECT {_pg_object(embed.of, 'ej.j')} "
            f"FROM \"{embed.of.table}\" e CROSS JOIN LATERAL to_jsonb(e) AS ej(j) "
            f"WHERE e.\"id\" = ({root} ->> '{embed.root_fk}')::bigint))"
        )
    for lookup in agg.lookups:
        parts.append(
            f"jsonb_build_object('{lookup.name}', (SELECT to_jsonb(l) -> '{lookup.column}' FROM \"{lookup.table}\" l "
            f"WHERE l.\"id\" = ({root} ->> '{lookup.root_fk}')::bigint))"
        )
    for tally in agg.tallies:
        # Money as Python prints it (scale 2, "0.00" when none), counts as JSON numbers.
        parts.append(f"jsonb_build_object('{tally.name}', ({_tally_sql(tally)}))")
    body = " || ".join(parts)
    return (
        f"CREATE OR REPLACE FUNCTION ttsync_snapshot_{agg.type}(p_id bigint) RETURNS jsonb\n"
        f"LANGUAGE sql STABLE SET search_path FROM CURRENT AS $fn$\n"
        f'  SELECT {body} FROM "{agg.root.table}" r CROSS JOIN LATERAL to_jsonb(r) AS rj(j) WHERE r."id" = p_id\n'
        f"$fn$;"
    )
