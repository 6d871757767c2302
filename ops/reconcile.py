"""`ttsync reconcile`: does QBO agree with TimeTracker? Per record: missing, different, extra, duplicate.

Reading is split from judging: ``load_qbo`` pages through QBO's query API (within the client's rate limit),
``judge`` is a pure function of TimeTracker's records, QBO's entities and the entity map. ``repair`` acts on
the drift found:

* what TimeTracker holds and QBO lacks or has wrong (missing, different) becomes a snapshot event in the
  outbox, so the consumer applies it in order with live changes, under the same dedupe rules;
* what QBO holds beyond TimeTracker (a second entity for one record, an entity for a record that is gone or
  must not be in QBO) has no TimeTracker change to carry it, so reconcile removes it itself: deleted, or voided
  where QBO refuses to delete (an invoice with payments), each with its own requestid.
"""

from __future__ import annotations

import datetime as dt
import html
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any, Literal

import structlog
from sqlalchemy import Engine, text

from consumer.errors import QboValidationFault
from consumer.lifecycle import QBO_ENTITY, Mapped, Placement, SyncPolicy, placement
from consumer.mapping import CENT, MARKER_RE, invoice_lines, legacy_qbo_id, request_id
from consumer.qbo_port import QboPort
from consumer.references import EXPENSE_ACCOUNT_TYPES, PAYING_ACCOUNT_TYPES
from consumer.state_store import StateStore
from producer.aggregate_snapshots import AGGREGATES, snapshot
from producer.outbox_snapshot import enqueue_snapshot
from schemas.events import InvoiceState

log = structlog.get_logger("ttsync.reconcile")

RECONCILED_TYPES = ("client", "invoice", "expense", "payment")
MARKER = MARKER_RE
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


@dataclass
class ReconcileReport:
    checked: dict[str, int] = field(default_factory=dict)
    qbo_entities: dict[str, int] = field(default_factory=dict)
    drift: list[Drift] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for d in self.drift:
            out[d.kind] += 1
        return dict(out)

    def as_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "qbo_entities": self.qbo_entities, "drift_counts": self.counts(),
                "drift": [asdict(d) for d in self.drift]}


# -- reading -------------------------------------------------------------------------------------------


def load_timetracker(engine: Engine, types: Iterable[str], since: dt.datetime | None) -> dict[str, dict[str, Any]]:
    """Every record's state as an event would carry it, keyed "type:id" (the capture's own description)."""
    out: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        for t in types:
            table = AGGREGATES[t].root.table
            where = "" if since is None else ' WHERE COALESCE("updated_at", "created_at") >= :since'
            for (rid,) in conn.execute(text(f'SELECT "id" FROM "{table}"{where} ORDER BY "id"'), {"since": since}):
                state = snapshot(conn, t, rid)
                if state is not None:
                    out[f"{t}:{rid}"] = state
    return out


def expense_values_in_use(engine: Engine) -> tuple[list[str], list[str]]:
    """The expense categories and payment methods TimeTracker's data holds (for ``ttsync map check``)."""
    with engine.connect() as conn:
        categories = [r[0] for r in conn.execute(text("SELECT DISTINCT category FROM expenses")) if r[0]]
        methods = [r[0] for r in conn.execute(text("SELECT DISTINCT payment_method FROM expenses")) if r[0]]
    return sorted(categories), sorted(methods)


def existing_ids(engine: Engine, aggregate_type: str, ids: Iterable[str]) -> set[str]:
    """Which of these ids TimeTracker still has (an extra's record may be outside --since, not gone)."""
    wanted = [int(i) for i in ids if i.isdigit()]
    if not wanted:
        return set()
    table = AGGREGATES[aggregate_type].root.table
    with engine.connect() as conn:
        rows = conn.execute(text(f'SELECT "id" FROM "{table}" WHERE "id" IN ({",".join(map(str, wanted))})'))
        return {str(r[0]) for r in rows}


def load_qbo(client: QboPort, entity: str, page: int = 1000) -> list[dict[str, Any]]:
    """All entities of one type, a page per query (QBO answers at most 1,000 per query)."""
    rows: list[dict[str, Any]] = []
    start = 1
    while True:
        got = client.query(f"SELECT * FROM {entity} STARTPOSITION {start} MAXRESULTS {page}", entity)
        rows.extend(got)
        if len(got) < page:
            return rows
        start += page


def compare(timetracker: Engine, client: QboPort, store: StateStore, policy: SyncPolicy, source: str,
            types: list[str], since: dt.datetime | None,
            on_step: Callable[[int, str, int], None] = lambda _n, _what, _count: None) -> ReconcileReport:
    """Read TimeTracker's records, then QBO's entities of each type (paged, at QBO's rate: the long part), then
    judge. ``on_step(steps done, what, how many)`` after each read, for progress."""
    report = ReconcileReport()
    records = load_timetracker(timetracker, types, since)
    for t in types:
        report.checked[t] = sum(1 for k in records if k.startswith(f"{t}:"))
    on_step(0, "timetracker_loaded", len(records))
    qbo: dict[str, list[dict[str, Any]]] = {}
    for done, t in enumerate(types, start=1):
        qbo[QBO_ENTITY[t]] = load_qbo(client, QBO_ENTITY[t])
        report.qbo_entities[QBO_ENTITY[t]] = len(qbo[QBO_ENTITY[t]])
        on_step(done, f"qbo_{QBO_ENTITY[t]}_loaded", len(qbo[QBO_ENTITY[t]]))
    if "expense" in types:  # to check each purchase's accounts by type
        qbo["Account"] = load_qbo(client, "Account")
    report.drift = judge(records, qbo, store.all_mapped(), policy, source,
                         still_in_timetracker=lambda t, ids: existing_ids(timetracker, t, ids))
    return report


# -- judging (pure) ------------------------------------------------------------------------------------


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
            m = MARKER.search(_note(name, e))
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


# -- repairing -----------------------------------------------------------------------------------------


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


def repair(drift: list[Drift], *, timetracker: Engine, client: QboPort, store: StateStore, source: str) -> None:
    """Fix each drift in place (``Drift.fixed`` says how). See the module docstring for the split."""
    for d in drift:
        try:
            if d.kind in ("missing", "different") and d.aggregate_id is not None:
                _enqueue(d, timetracker, client, store, source)
            elif d.kind == "duplicate" and d.aggregate_id is not None:
                keep = keeper_of(d, store)
                removed = [_remove(client, d.qbo_entity, qid) for qid in d.qbo_ids if qid != keep]
                store.adopt(d.aggregate_type, d.aggregate_id, client.read(d.qbo_entity, keep),
                            version=_version(store, d))
                d.fixed = f"kept {keep}; " + ", ".join(removed)
            elif d.kind == "extra":
                d.fixed = ", ".join(_remove(client, d.qbo_entity, qid) for qid in d.qbo_ids)
                if d.aggregate_id is not None:
                    store.forget(d.aggregate_type, d.aggregate_id, status="deleted")
        except QboValidationFault as fault:
            d.fixed = f"not fixed: QBO refused ({fault.code}): {fault}"
        log.info("drift_repaired", kind=d.kind, aggregate_type=d.aggregate_type, aggregate_id=d.aggregate_id,
                 qbo_ids=d.qbo_ids, fixed=d.fixed)


def _version(store: StateStore, d: Drift) -> int:
    m = store.mapped(d.aggregate_type, d.aggregate_id or "")
    return m.last_version if m else 0


def keeper_of(d: Drift, store: StateStore) -> str:
    """The QBO id of a duplicate that stays: the entity map's, else the oldest."""
    m = store.mapped(d.aggregate_type, d.aggregate_id or "")
    if m and m.qbo_id in d.qbo_ids:
        return m.qbo_id
    return min(d.qbo_ids, key=lambda q: int(q) if q.isdigit() else 0)


def _enqueue(d: Drift, timetracker: Engine, client: QboPort, store: StateStore, source: str) -> None:
    agg_id = d.aggregate_id or ""
    current = store.mapped(d.aggregate_type, agg_id)
    if d.kind == "missing":
        if current is not None:  # it points at an entity someone deleted in QBO: the consumer must create anew
            store.forget(d.aggregate_type, agg_id, status="deleted")
    elif d.qbo_ids and (current is None or current.qbo_id != d.qbo_ids[0]):
        # Found by marker or legacy id, not (or otherwise) in the entity map: the snapshot must update this one.
        store.adopt(d.aggregate_type, agg_id, client.read(d.qbo_entity, d.qbo_ids[0]),
                    version=current.last_version if current else 0)
    with timetracker.begin() as conn:
        enqueued = enqueue_snapshot(conn, d.aggregate_type, agg_id, source)
    if enqueued is None:
        d.fixed = "not fixed: the record is gone from TimeTracker"
        return
    event_id, version = enqueued
    d.fixed = f"enqueued {d.aggregate_type}.snapshot v{version} ({event_id})"


def _remove(client: QboPort, entity: str, qbo_id: str) -> str:
    """Take one entity out of the books the least destructive way QBO allows (``REMOVAL``); logged by id."""
    current = client.read(entity, qbo_id)
    token = str(current.get("SyncToken", "0"))
    how = REMOVAL.get(entity, "delete")
    rid = request_id(f"reconcile:{entity}:{qbo_id}", how, token)
    if how == "void":
        client.void(entity, qbo_id, token, rid)
        done = f"voided {qbo_id}"
    elif how == "deactivate":
        client.update(entity, {"Id": qbo_id, "SyncToken": token, "sparse": True, "Active": False}, rid)
        done = f"deactivated {qbo_id}"
    else:
        client.delete(entity, qbo_id, token, rid)
        done = f"deleted {qbo_id}"
    log.warning("qbo_entity_removed", entity=entity, qbo_id=qbo_id, how=how, by="reconcile --fix")
    return done

