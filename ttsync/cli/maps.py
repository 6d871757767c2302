"""Operator mappings of TimeTracker values to QBO accounts, items, vendors and customers: `map set|check|unset|list`."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from ttsync.cli.base import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    JsonOpt,
    console,
    emit_json,
    err_console,
    fail,
    load_settings,
    map_app,
    state_store,
)


@map_app.command("set")
def map_set(
    kind: Annotated[str, typer.Argument(help="expense-account | paying-account | item | vendor | customer")],
    key: Annotated[str, typer.Argument(help="The TimeTracker value: a category, a payment method (cash, "
                                            "credit_card, ...) or CreditCard/Cash/Check, 'default', a vendor name "
                                            "or a client id.")],
    target: Annotated[str, typer.Argument(help="The QBO name or id it maps to.")],
    as_json: JsonOpt = False,
) -> None:
    """Map a TimeTracker value to a QBO account/item/vendor/customer (takes effect at once; then replay).
    The target is checked in QBO first: it must exist, and an account must be of the right type."""
    from ttsync.wiring import build_parts

    kind_key = _override_kind(kind)
    parts = build_parts(load_settings())
    problem = _target_problem(parts.applier.resolver, kind_key, key, target)
    if problem:
        fail(f"not mapped: {kind} {key!r} -> {target!r}: {problem}", EXIT_FAILED, as_json)
    parts.store.set_override(kind_key, key, target)
    if as_json:
        emit_json({"kind": kind, "key": key, "target": target})
    else:
        console.print(f"{kind} {key!r} -> {target!r}")


def _target_problem(resolver: Any, kind: str, key: str, target: str) -> str | None:
    """Why QBO cannot take ``target`` for this mapping, or None (read-only: nothing is created)."""
    from consumer.references import EXPENSE_ACCOUNT_TYPES, PAYING_ACCOUNT_TYPES

    if kind in ("expense_account", "paying_account"):
        if kind == "expense_account":
            types = EXPENSE_ACCOUNT_TYPES
        else:
            ptype = key if key in PAYING_ACCOUNT_TYPES else resolver.options.payment_types.get(
                key.strip().lower(), resolver.options.default_payment_type)
            types = PAYING_ACCOUNT_TYPES[ptype]
        _found, problem = resolver.account_problem(target, types)
        return problem[1] if problem else None
    entity, field = {"item": ("Item", "Name"), "vendor": ("Vendor", "DisplayName"),
                     "customer": ("Customer", "DisplayName")}[kind]
    if target.isdigit():
        try:
            resolver.client.read(entity, target)
        except Exception:  # noqa: BLE001 - any refusal to read it means QBO has no such entity for us
            return f"QBO has no {entity} with id {target}"
        return None
    return None if resolver._find(entity, field, target) else f"QBO has no {entity} named {target!r}"


@map_app.command("check")
def map_check(as_json: JsonOpt = False) -> None:
    """Preflight: every expense category and payment method (TimeTracker's, those in its data, and every
    configured mapping) with the QBO account it resolves to. Exit 1 when one is missing or of the wrong type."""
    from ops.reconcile import expense_values_in_use
    from producer.database import make_engine
    from ttsync.wiring import build_parts

    settings = load_settings()
    categories, methods = expense_values_in_use(make_engine(settings.database_url))
    rows = build_parts(settings).applier.resolver.preflight(categories, methods)
    bad = [r for r in rows if r.problem]
    if as_json:
        emit_json({"ok": not bad, "mappings": [r.__dict__ for r in rows]})
    else:
        table = Table(title="ttsync map check")
        for col in ("mapping", "wanted", "QBO id", "QBO name", "type", "problem"):
            table.add_column(col)
        for r in rows:
            table.add_row(r.kind, r.wanted or "", r.qbo_id or "", r.name or "", r.account_type or "",
                          f"[red]{r.problem}[/]" if r.problem else "[green]ok[/]")
        console.print(table)
        console.print(f"{len(bad)} problem(s)" if bad else "every mapping resolves")
    raise typer.Exit(EXIT_FAILED if bad else EXIT_OK)


@map_app.command("unset")
def map_unset(kind: str, key: str, as_json: JsonOpt = False) -> None:
    """Remove an operator mapping."""
    removed = state_store().delete_override(_override_kind(kind), key)
    if as_json:
        emit_json({"removed": removed})
    else:
        console.print("removed" if removed else "no such mapping")
    raise typer.Exit(EXIT_OK if removed else EXIT_FAILED)


@map_app.command("list")
def map_list(as_json: JsonOpt = False) -> None:
    """Operator mappings and the references resolved so far (cached in the state database)."""
    rows = state_store().refs()
    if as_json:
        emit_json([{k: str(v) for k, v in r.items()} for r in rows])
        return
    table = Table(title="ttsync mappings")
    for col in ("kind", "key", "qbo", "name"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["kind"], r["key"], r["qbo_id"], r["name"] or "")
    console.print(table)


def _override_kind(kind: str) -> str:
    from consumer.references import OVERRIDE_KINDS

    if kind not in OVERRIDE_KINDS:
        err_console.print(f"[red]unknown kind {kind!r}; one of {', '.join(OVERRIDE_KINDS)}[/]")
        raise typer.Exit(EXIT_USAGE)
    return OVERRIDE_KINDS[kind]
