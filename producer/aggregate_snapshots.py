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
    """A sum or count over the rows of another table that point at the root (the invoice's completed
    payments), flattened into the root as money (sum) or an integer (count)."""

    name: str
    table: str
    fk: str
    function: Literal["sum", "count"]
    column: str = "id"
    where: str = "TRUE"  # a fixed SQL condition on that table's columns, never built from data


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
            Tally("payments_completed", "payments", "invoice_id", "sum", "amount", "t.\"status\" = 'completed'"),
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
    "client": Aggregate("client", CLIENT, touched_by={"clients": "id"}),
}

TABLE_TO_AGGREGATES: dict[str, list[tuple[str, str]]] = {}
for _agg in AGGREGATES.values():
    for _table, _col in _agg.touched_by.items():
        TABLE_TO_AGGREGATES.setdefault(_table, []).append((_agg.type, _col))


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
    names = ", ".join(f'"{name}"' for name, _ in cols.columns)
    return text(f'SELECT {names} FROM "{cols.table}" WHERE {where}')


def _row_dict(cols: Columns, row: Any) -> dict[str, Any]:
    return {name: _encode(kind, row[i]) for i, (name, kind) in enumerate(cols.columns)}


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
        value = None
        if ref is not None:
            value = conn.execute(
                text(f'SELECT "{lookup.column}" FROM "{lookup.table}" WHERE "id" = :id'), {"id": ref}
            ).scalar()
        state[lookup.name] = value
    for tally in agg.tallies:
        value = conn.execute(text(_tally_sql(tally, ":id")), {"id": int(aggregate_id)}).scalar()
        state[tally.name] = _encode("money", value or 0) if tally.function == "sum" else int(value or 0)
    return state


def _tally_sql(tally: Tally, ref: str) -> str:
    column = "*" if tally.function == "count" else f't."{tally.column}"'
    return (f'SELECT {tally.function.upper()}({column}) FROM "{tally.table}" t '
            f'WHERE t."{tally.fk}" = {ref} AND ({tally.where})')


# --- PostgreSQL side ----------------------------------------------------------------------------------


def _pg_value(alias: str, name: str, kind: Kind) -> str:
    ref = f'{alias}."{name}"'
    if kind == "money":
        return f"{ref}::text"
    if kind == "date":
        return f"to_char({ref}, 'YYYY-MM-DD')"
    if kind == "ts":
        return f"to_char({ref}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"
    if kind == "json":
        return f"{ref}::jsonb"
    return ref


def _pg_object(cols: Columns, alias: str) -> str:
    # jsonb_build_object takes at most 100 arguments: build in chunks and concatenate.
    pairs = [f"'{name}', {_pg_value(alias, name, kind)}" for name, kind in cols.columns]
    chunks = [pairs[i : i + 40] for i in range(0, len(pairs), 40)]
    return " || ".join(f"jsonb_build_object({', '.join(chunk)})" for chunk in chunks)


ROOT_ID = 'r."id"'


def snapshot_function_sql(agg: Aggregate) -> str:
    """``ttsync_snapshot_<type>(id bigint) RETURNS jsonb``, the trigger-side twin of ``snapshot()``."""
    parts = [_pg_object(agg.root, "r")]
    for child in agg.children:
        parts.append(
            f"jsonb_build_object('{child.name}', COALESCE((SELECT jsonb_agg({_pg_object(child.of, 'c')} "
            f'ORDER BY c."id") FROM "{child.of.table}" c WHERE c."{child.fk}" = r."id"), \'[]\'::jsonb))'
        )
    for embed in agg.embeds:
        parts.append(
            f"jsonb_build_object('{embed.name}', (SELECT {_pg_object(embed.of, 'e')} "
            f'FROM "{embed.of.table}" e WHERE e."id" = r."{embed.root_fk}"))'
        )
    for lookup in agg.lookups:
        parts.append(
            f"jsonb_build_object('{lookup.name}', (SELECT l.\"{lookup.column}\" FROM \"{lookup.table}\" l "
            f'WHERE l."id" = r."{lookup.root_fk}"))'
        )
    for tally in agg.tallies:
        value = f"({_tally_sql(tally, ROOT_ID)})"
        # Money as Python prints it (scale 2, "0.00" when none), counts as JSON numbers.
        value = f"COALESCE({value}, 0)::numeric(14,2)::text" if tally.function == "sum" else value
        parts.append(f"jsonb_build_object('{tally.name}', {value})")
    body = " || ".join(parts)
    return (
        f"CREATE OR REPLACE FUNCTION ttsync_snapshot_{agg.type}(p_id bigint) RETURNS jsonb\n"
        f"LANGUAGE sql STABLE AS $fn$\n"
        f'  SELECT {body} FROM "{agg.root.table}" r WHERE r."id" = p_id\n'
        f"$fn$;"
    )
