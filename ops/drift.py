"""What reconcile finds, judged: where each TimeTracker record belongs in QBO (the sync policy, read by
``lifecycle.placement``), how a QBO entity differs from it, and which QBO entities a fix would take out. Pure:
records, entities and the entity map in, drift out; ``ops.reconcile`` reads and repairs."""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from consumer.lifecycle import QBO_ENTITY, Mapped, Placement, SyncPolicy, placement
from consumer.mapping import CENT, MARKER_RE, invoice_lines, legacy_qbo_id
from consumer.references import EXPENSE_ACCOUNT_TYPES, PAYING_ACCOUNT_TYPES
from schemas.events import InvoiceState

Expect = Literal["present", "voided", "absent", "any"]

DriftKind = Literal["missing", "different", "extra", "duplicate"]

@dataclass
class Drift:
    kind: DriftKind
    aggregate_type: str
    aggregate_id: str | None
    qbo_entity: str
    qbo_ids: list[str]
    detail: str
    fixed: str | None = None  # what --fix did: "enqueued", "deleted 123", "voided 123", or why it could not

_EXPECT: dict[Placement, Expect] = {
    Placement.PRESENT: "present", Placement.UNLESS_UNISSUED: "any", Placement.VOIDED: "voided",
    Placement.REMOVED: "absent", Placement.LOCAL: "absent", Placement.INACTIVE: "any", Placement.OFF: "any"}

def expected(aggregate_type: str, state: dict[str, Any], policy: SyncPolicy) -> Expect:
    """Where the record belongs in QBO under the sync policy (lifecycle.placement, which decide() reads too).
    "any" where QBO may hold it or not: a draft made overdue (in QBO only if it was synced when sent), an
    archived client (QBO keeps customers, inactive)."""
    return _EXPECT[placement(aggregate_type, state, policy)]

def _money(value: Any) -> Decimal:
    return Decimal(str(value if value is not None else 0)).quantize(CENT)

def is_voided(entity: dict[str, Any]) -> bool:
    return bool(entity.get("Voided")) or str(entity.get("PrivateNote") or "").startswith("Voided")

def differences(aggregate_type: str, state: dict[str, Any], entity: dict[str, Any],
                customer_ref: str | None, accounts: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """What differs between a record and its QBO entity, as an accountant compares them: totals, balances,
    lines, accounts and their types, names (after decoding TimeTracker's HTML entities), status, customer."""
    diffs: list[str] = []
    if is_voided(entity):
        return ["voided in QBO, active in TimeTracker"]
    if aggregate_type == "invoice":
        want = sorted(_money(ln["Amount"]) for ln in invoice_lines(_invoice_state(state), "-"))
        got = sorted(_money(ln.get("Amount")) for ln in entity.get("Line", [])
                     if ln.get("DetailType") == "SalesItemLineDetail")
        if want != got:
            diffs.append(f"lines {[str(g) for g in got]}, TimeTracker has {[str(w) for w in want]}")
        total = _money(state.get("total_amount"))
        if _money(entity.get("TotalAmt")) != total:
            diffs.append(f"total {_money(entity.get('TotalAmt'))}, TimeTracker has {total}")
        balance = total - _money(state.get("amount_paid"))
        if _money(entity.get("Balance")) != balance:
            diffs.append(f"balance {_money(entity.get('Balance'))}, TimeTracker has {balance}")
        if entity.get("DocNumber") != state.get("invoice_number"):
            diffs.append(f"DocNumber {entity.get('DocNumber')!r}, TimeTracker has {state.get('invoice_number')!r}")
        got_customer = (entity.get("CustomerRef") or {}).get("value")
        if customer_ref and got_customer != customer_ref:
            diffs.append(f"customer {got_customer}, TimeTracker's client is QBO customer {customer_ref}")
    elif aggregate_type == "expense":
        want_total = _money(state.get("amount")) + _money(state.get("tax_amount"))
        if _money(entity.get("TotalAmt")) != want_total:
            diffs.append(f"amount {_money(entity.get('TotalAmt'))}, TimeTracker has {want_total}")
        if accounts is not None:
            diffs += _account_type_differences(entity, accounts)
    elif aggregate_type == "payment":
        if _money(entity.get("TotalAmt")) != _money(state.get("amount")):
            diffs.append(f"amount {_money(entity.get('TotalAmt'))}, TimeTracker has {_money(state.get('amount'))}")
    elif aggregate_type == "client":
        email = (entity.get("PrimaryEmailAddr") or {}).get("Address")
        if (email or None) != (state.get("email") or None):
            diffs.append(f"e-mail {email!r}, TimeTracker has {state.get('email')!r}")
        name = html.unescape(str(state.get("name") or ""))
        if entity.get("DisplayName") not in (name, f"{name} (customer)"):
            diffs.append(f"name {entity.get('DisplayName')!r}, TimeTracker has {name!r}")
    return diffs

def _invoice_state(state: dict[str, Any]) -> InvoiceState:
    return InvoiceState.model_validate(state)

def _account_type_differences(purchase: dict[str, Any], accounts: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    paying = accounts.get(str((purchase.get("AccountRef") or {}).get("value")))
    wanted = PAYING_ACCOUNT_TYPES.get(str(purchase.get("PaymentType")), frozenset())
    if paying is not None and paying.get("AccountType") not in wanted:
        out.append(f"paid from {paying.get('Name')!r}, a {paying.get('AccountType')} account")
    for line in purchase.get("Line") or []:
        ref = ((line.get("AccountBasedExpenseLineDetail") or {}).get("AccountRef") or {}).get("value")
        booked = accounts.get(str(ref))
        if booked is not None and booked.get("AccountType") not in EXPENSE_ACCOUNT_TYPES:
            out.append(f"booked to {booked.get('Name')!r}, a {booked.get('AccountType')} account, not an expense "
                       "account")
    return out

def _note(entity_name: str, entity: dict[str, Any]) -> str:
    return str(entity.get("Notes") if entity_name == "Customer" else entity.get("PrivateNote") or "")

def judge(records: dict[str, dict[str, Any]], qbo: dict[str, list[dict[str, Any]]],
          mapped: dict[str, Mapped], policy: SyncPolicy, source: str,
          still_in_timetracker: Callable[[str, list[str]], set[str]] = lambda _t, _ids: set()) -> list[Drift]:
    """``records``: TimeTracker's states keyed "type:id"; ``qbo``: entities per QBO entity name; ``mapped``:
    the entity map keyed "type:id". An entity belongs to a record by ttsync's marker, the entity map, or the
    id TimeTracker's old connector stored."""
    by_id = {(name, str(e["Id"])): e for name, rows in qbo.items() for e in rows}
    owners: dict[str, set[tuple[str, str]]] = defaultdict(set)  # "type:id" -> {(entity, qbo id)}
    for name, rows in qbo.items():
        for e in rows:
            m = MARKER_RE.search(_note(name, e))
            if m and m.group(3) == source:
                owners[f"{m.group(1)}:{m.group(2)}"].add((name, str(e["Id"])))
    for key, m_ in mapped.items():
        if m_.qbo_id and (m_.qbo_entity, m_.qbo_id) in by_id:
            owners[key].add((m_.qbo_entity, m_.qbo_id))
    for key, state in records.items():
        t = key.split(":")[0]
        legacy = legacy_qbo_id(t, state)
        if legacy and (QBO_ENTITY[t], legacy) in by_id:
            owners[key].add((QBO_ENTITY[t], legacy))

    accounts = {str(a["Id"]): a for a in qbo["Account"]} if "Account" in qbo else None
    drift: list[Drift] = []
    for key, state in records.items():
        t, rid = key.split(":")
        name = QBO_ENTITY[t]
        want = expected(t, state, policy)
        found = [by_id[o] for o in sorted(owners.get(key, set()), key=lambda o: int(o[1]) if o[1].isdigit() else 0)]
        live = [e for e in found if not is_voided(e)]
        ids = [str(e["Id"]) for e in found]
        if want == "any":
            continue
        if len(live) > 1:
            drift.append(Drift("duplicate", t, rid, name, [str(e["Id"]) for e in live],
                               f"{len(live)} live QBO {name}s for one TimeTracker {t}"))
            continue
        if want == "present":
            if not found:
                drift.append(Drift("missing", t, rid, name, [], f"{t} {rid} ({state.get('status')}) is not in QBO"))
                continue
            entity = live[0] if live else found[0]
            client_map = mapped.get(f"client:{state.get('client_id')}") if t == "invoice" else None
            diffs = differences(t, state, entity, client_map.qbo_id if client_map else None, accounts)
            if diffs:
                drift.append(Drift("different", t, rid, name, [str(entity["Id"])], "; ".join(diffs)))
        elif want == "absent" and live:
            drift.append(Drift("extra", t, rid, name, [str(e["Id"]) for e in live],
                               f"{t} {rid} is {state.get('status')} in TimeTracker (stays out of QBO), live in QBO"))
        elif want == "voided" and live:
            drift.append(Drift("different", t, rid, name, ids,
                               f"{t} {rid} is {state.get('status')} in TimeTracker, live in QBO (must be voided)"))
    # Entities whose record reconcile did not load: gone from TimeTracker, or outside --since.
    orphans: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key, owned in owners.items():
        if key not in records:
            orphans[key.split(":")[0]].extend((key, qid) for _n, qid in owned)
    for t, pairs in orphans.items():
        kept = still_in_timetracker(t, sorted({k.split(":")[1] for k, _ in pairs}))
        gone: dict[str, list[str]] = defaultdict(list)
        for key, qid in pairs:
            if key.split(":")[1] not in kept and not is_voided(by_id[(QBO_ENTITY[t], qid)]):
                gone[key].append(qid)
        for key, qids in sorted(gone.items()):
            drift.append(Drift("extra", t, key.split(":")[1], QBO_ENTITY[t], sorted(qids),
                               f"{t} {key.split(':')[1]} no longer exists in TimeTracker"))
    return drift

# How a QBO entity that must go is taken out: voided where QBO keeps a voided transaction (the books show the
# reversal), deleted where it cannot void (a Purchase), made inactive where it cannot delete (a Customer).
REMOVAL = {"Invoice": "void", "Payment": "void", "Purchase": "delete", "Customer": "deactivate"}

@dataclass(frozen=True)
class Removal:
    entity: str
    qbo_id: str
    how: str
    why: str

def removals(drift: list[Drift], keeper: Callable[[Drift], str]) -> list[Removal]:
    """The destructive part of a fix, as a plan: every QBO entity ``--fix`` would void, delete or deactivate.
    ``keeper``: which QBO id of a duplicate stays (``repair`` keeps the same: ``keeper_of``)."""
    out = []
    for d in drift:
        if d.kind == "extra":
            out += [Removal(d.qbo_entity, q, REMOVAL.get(d.qbo_entity, "delete"), d.detail) for q in d.qbo_ids]
        elif d.kind == "duplicate":
            keep = keeper(d)
            out += [Removal(d.qbo_entity, q, REMOVAL.get(d.qbo_entity, "delete"), f"duplicate of {keep}")
                    for q in d.qbo_ids if q != keep]
    return out

def removal_refusal(plan: list[Removal], checked: dict[str, int], *, max_removals: int) -> str | None:
    """Why a fix must not run (pure): TimeTracker read as empty while QBO holds ttsync's entities (a wrong or
    empty database, a mistyped status setting), or more removals than the operator allowed."""
    if plan and sum(checked.values()) == 0:
        return (f"TimeTracker reads as empty ({', '.join(checked) or 'no types'} checked: 0 records) while QBO "
                f"holds {len(plan)} of ttsync's entities: is TTSYNC_DATABASE_URL the right database? Nothing removed")
    if len(plan) > max_removals:
        return (f"the fix would remove {len(plan)} QBO entities, more than --max-deletes {max_removals}: check the "
                "plan, then raise --max-deletes if it is right")
    return None
