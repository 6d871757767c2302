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
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
from sqlalchemy import Engine, text

from consumer.errors import QboValidationFault
from consumer.lifecycle import QBO_ENTITY, SyncPolicy
from consumer.mapping import request_id
from consumer.qbo_port import QUERY_PAGE, QboPort, query_all
from consumer.state_store import StateStore
from ops.drift import REMOVAL, Drift, judge
from producer.aggregate_snapshots import AGGREGATES, snapshot
from producer.outbox_snapshot import enqueue_snapshot

log = structlog.get_logger("ttsync.reconcile")

RECONCILED_TYPES = ("client", "invoice", "expense", "payment")


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


def load_qbo(client: QboPort, entity: str, page: int = QUERY_PAGE) -> list[dict[str, Any]]:
    """All entities of one type, a page per query (QBO answers at most 1,000 per query)."""
    return query_all(client, entity, page=page)


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


# -- repairing -----------------------------------------------------------------------------------------


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

