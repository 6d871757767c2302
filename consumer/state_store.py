"""The consumer's memory in the state database: processed events, the entity map, resolved references."""

from __future__ import annotations

import datetime as dt
from typing import Any, NamedTuple

from sqlalchemy import Engine, and_, delete, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from consumer.lifecycle import QBO_ENTITY, Mapped
from consumer.state_db import begin, connect
from consumer.state_tables import dead_lettered, entity_map, processed_events, qbo_refs
from schemas.events import EventEnvelope

OVERRIDE = "override:"  # the kind prefix of an operator's mapping in ttsync_qbo_refs


def _to_mapped(row: Any) -> Mapped | None:
    if row is None:
        return None
    return Mapped(row.qbo_entity, row.qbo_id, row.sync_token, int(row.last_version), row.qbo_status,
                  row.customer_ref, row.pending_requestid)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Recorded(NamedTuple):
    """What ``StateStore.record`` writes for one event: its outcome and, when QBO wrote, the entity."""

    event: EventEnvelope
    outcome: str
    qbo: dict[str, Any] | None = None
    status: str | None = None
    customer_ref: str | None = None


class StateStore:
    def __init__(self, engine: Engine, realm_id: str, consumer_group: str) -> None:
        self.engine = engine
        self.realm_id = realm_id
        self.group = consumer_group

    # -- processed events ----------------------------------------------------------------------------

    def processed_among(self, event_ids: list[str], *, also_groups: tuple[str, ...] = ()) -> set[str]:
        """Which of these events this group (or ``also_groups``: the import group) has processed (read-only;
        ``dlq list`` marks them resolved)."""
        found: set[str] = set()
        with connect(self.engine) as conn:
            for start in range(0, len(event_ids), 500):
                chunk = event_ids[start:start + 500]
                found.update(conn.execute(select(processed_events.c.event_id).where(
                    processed_events.c.consumer_group.in_((self.group, *also_groups)),
                    processed_events.c.event_id.in_(chunk))).scalars())
        return found

    def record_processed(self, group: str, event_id: str, kind: str, key: str, outcome: str) -> None:
        """A record another group applied without an entity-map version (a QBO change the importer applied to
        TimeTracker): noted for ``dlq list`` only; the importer's own dedupe lives with its TimeTracker writes."""
        with begin(self.engine) as conn:
            conn.execute(self._insert(conn, processed_events).values(
                consumer_group=group, event_id=event_id[:36], aggregate_type=kind[:64], aggregate_id=key[:255],
                aggregate_version=0, outcome=outcome[:32], processed_at=_now()).on_conflict_do_nothing())

    # -- dead-lettered versions ------------------------------------------------------------------------

    def note_dead_lettered(self, event: EventEnvelope, reason: str) -> None:
        """This group sent ``event`` to the dead-letter topic (again, after a replay that failed the same way)."""
        values = {"event_id": str(event.event_id)[:36], "reason": reason[:500], "dead_lettered_at": _now()}
        with begin(self.engine) as conn:
            conn.execute(self._insert(conn, dead_lettered).values(
                consumer_group=self.group, aggregate_type=event.aggregate_type, aggregate_id=str(event.aggregate_id),
                aggregate_version=event.aggregate_version, **values).on_conflict_do_update(
                index_elements=[dead_lettered.c.consumer_group, dead_lettered.c.aggregate_type,
                                dead_lettered.c.aggregate_id, dead_lettered.c.aggregate_version], set_=values))

    def dead_lettered_between(self, aggregate_type: str, aggregate_id: str, first: int, last: int
                              ) -> list[tuple[int, str]]:
        """(version, reason) of the versions ``first``..``last`` of an aggregate this group dead-lettered."""
        with connect(self.engine) as conn:
            rows = conn.execute(select(dead_lettered.c.aggregate_version, dead_lettered.c.reason).where(
                dead_lettered.c.consumer_group == self.group, dead_lettered.c.aggregate_type == aggregate_type,
                dead_lettered.c.aggregate_id == str(aggregate_id),
                dead_lettered.c.aggregate_version.between(first, last)).order_by(dead_lettered.c.aggregate_version))
            return [(int(r.aggregate_version), str(r.reason)) for r in rows]

    # -- entity map ----------------------------------------------------------------------------------

    def _key(self, aggregate_type: str, aggregate_id: str) -> Any:
        return and_(entity_map.c.realm_id == self.realm_id, entity_map.c.aggregate_type == aggregate_type,
                    entity_map.c.aggregate_id == str(aggregate_id))

    def mapped(self, aggregate_type: str, aggregate_id: str) -> Mapped | None:
        with connect(self.engine) as conn:
            return _to_mapped(conn.execute(select(entity_map).where(self._key(aggregate_type, aggregate_id))).first())

    def unmapped(self, aggregate_type: str, aggregate_ids: set[str]) -> set[str]:
        """Which of these aggregates the entity map ties to no QBO entity yet, in one round trip per 500."""
        ids = sorted(aggregate_ids)
        mapped: set[str] = set()
        with connect(self.engine) as conn:
            for start in range(0, len(ids), 500):
                mapped.update(conn.execute(select(entity_map.c.aggregate_id).where(
                    entity_map.c.realm_id == self.realm_id, entity_map.c.aggregate_type == aggregate_type,
                    entity_map.c.aggregate_id.in_(ids[start:start + 500]),
                    entity_map.c.qbo_id.is_not(None))).scalars())
        return set(ids) - mapped

    def owner_of(self, qbo_id: str, aggregate_types: tuple[str, ...]) -> str | None:
        """The aggregate (of one of ``aggregate_types``) the entity map ties to a QBO id, e.g. the TimeTracker
        invoice of a QBO Invoice, or None."""
        with connect(self.engine) as conn:
            row = conn.execute(select(entity_map.c.aggregate_id).where(
                entity_map.c.realm_id == self.realm_id, entity_map.c.qbo_id == str(qbo_id),
                entity_map.c.aggregate_type.in_(aggregate_types))).first()
        return None if row is None else str(row.aggregate_id)

    def all_mapped(self) -> dict[str, Mapped]:
        """The whole entity map of this realm, keyed "type:id" (reconcile reads it once)."""
        with connect(self.engine) as conn:
            rows = conn.execute(select(entity_map).where(entity_map.c.realm_id == self.realm_id)).all()
        return {f"{r.aggregate_type}:{r.aggregate_id}": m for r in rows if (m := _to_mapped(r)) is not None}

    def lookup(self, event_id: Any, aggregate_type: str, aggregate_id: str) -> tuple[bool, Mapped | None]:
        """(already processed?, what the entity map holds) in one round trip to the pool."""
        processed = select(processed_events.c.event_id).where(
            processed_events.c.consumer_group == self.group, processed_events.c.event_id == str(event_id)).exists()
        # One statement: the entity-map row, if any, joined to a single row that says whether the event was seen.
        one = select(literal(1).label("one")).subquery()
        with connect(self.engine) as conn:
            row = conn.execute(select(processed.label("processed"), entity_map).select_from(
                one.outerjoin(entity_map, self._key(aggregate_type, aggregate_id)))).one()
        return bool(row.processed), _to_mapped(row) if row.realm_id is not None else None

    def _insert(self, conn: Any, table: Any) -> Any:
        return (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)

    def _upsert(self, conn: Any, aggregate_type: str, aggregate_id: str, values: dict[str, Any],
                version: int | None = None) -> None:
        """One statement: insert the row or update it; ``last_version`` only ever grows."""
        self._upsert_many(conn, [(aggregate_type, aggregate_id, values, version)])

    def _upsert_many(self, conn: Any, rows: list[tuple[str, str, dict[str, Any], int | None]]) -> None:
        """``_upsert`` for several aggregates, (type, id, values, version) each: the rows that set the same columns
        go in one statement executed for each of them (psycopg pipelines them: one round trip for all). Rows are
        written in their order; an aggregate that comes back starts a new statement."""
        groups: list[tuple[tuple[frozenset[str], bool], list[dict[str, Any]], set[tuple[str, str]]]] = []
        for aggregate_type, aggregate_id, values, version in rows:
            values = {**values, "updated_at": _now()}
            params = {"realm_id": self.realm_id, "aggregate_type": aggregate_type, "aggregate_id": str(aggregate_id),
                      "qbo_entity": QBO_ENTITY.get(aggregate_type, aggregate_type), "last_version": version or 0,
                      "qbo_status": "active", **values}
            shape, key = (frozenset(values), version is not None), (aggregate_type, str(aggregate_id))
            if not groups or groups[-1][0] != shape or key in groups[-1][2]:
                groups.append((shape, [], set()))
            groups[-1][1].append(params)
            groups[-1][2].add(key)
        for (columns, versioned), params_list, _ in groups:
            stmt = self._insert(conn, entity_map)
            update_set: dict[str, Any] = {c: stmt.excluded[c] for c in columns}
            if versioned:
                bigger = func.greatest if conn.dialect.name == "postgresql" else func.max
                update_set["last_version"] = bigger(entity_map.c.last_version, stmt.excluded.last_version)
            conn.execute(stmt.on_conflict_do_update(
                index_elements=[entity_map.c.realm_id, entity_map.c.aggregate_type, entity_map.c.aggregate_id],
                set_=update_set), params_list)

    def mark_pending(self, aggregate_type: str, aggregate_id: str, requestid: str) -> None:
        """Before a create: if we crash after QBO wrote but before we recorded it, the redelivery sees this
        and looks for the entity in QBO instead of creating a second one."""
        self.mark_pending_many([(aggregate_type, aggregate_id, requestid)])

    def mark_pending_many(self, creates: list[tuple[str, str, str]]) -> None:
        """``mark_pending`` for the creates of a batch request, (aggregate type, id, requestid) each, in one
        transaction: all of them are durable before the request is sent."""
        if not creates:
            return
        with begin(self.engine) as conn:
            self._upsert_many(conn, [(aggregate_type, aggregate_id, {"pending_requestid": requestid,
                                                                     "pending_since": _now()}, None)
                                     for aggregate_type, aggregate_id, requestid in creates])

    def record(self, event: EventEnvelope, outcome: str, *, qbo: dict[str, Any] | None = None,
               status: str | None = None, customer_ref: str | None = None) -> None:
        """One transaction: the entity map moves to this version, and the event is marked processed."""
        self.record_many([Recorded(event, outcome, qbo, status, customer_ref)])

    def record_many(self, outcomes: list[Recorded]) -> None:
        """``record`` for the writes of a batch request, in one transaction: each event's entity-map row and
        processed mark land together, as with ``record``; a crash before the commit loses all of them, and the
        redelivered events find their entities through the requestids and pending marks."""
        if not outcomes:
            return
        entity_rows: list[tuple[str, str, dict[str, Any], int | None]] = []
        processed: list[dict[str, Any]] = []
        for done in outcomes:
            event, qbo = done.event, done.qbo
            values: dict[str, Any] = {"pending_requestid": None, "pending_since": None}
            if qbo is not None:
                values.update(qbo_id=str(qbo["Id"]), sync_token=str(qbo.get("SyncToken", "0")))
            if done.status is not None:
                values["qbo_status"] = done.status
            if done.customer_ref is not None:
                values["customer_ref"] = done.customer_ref
            entity_rows.append((event.aggregate_type, event.aggregate_id, values, event.aggregate_version))
            processed.append({"consumer_group": self.group, "event_id": str(event.event_id),
                              "aggregate_type": event.aggregate_type, "aggregate_id": event.aggregate_id,
                              "aggregate_version": event.aggregate_version, "outcome": done.outcome,
                              "qbo_id": str(qbo["Id"]) if qbo else None, "processed_at": _now()})
        with begin(self.engine) as conn:
            self._upsert_many(conn, entity_rows)
            # A second consumer may have processed it during a rebalance: same effect, nothing to add.
            conn.execute(self._insert(conn, processed_events).on_conflict_do_nothing(), processed)

    def adopt(self, aggregate_type: str, aggregate_id: str, qbo: dict[str, Any], *, version: int = 0,
              customer_ref: str | None = None) -> None:
        """Map an aggregate to a QBO entity that exists already (found by its natural key)."""
        values: dict[str, Any] = {"qbo_id": str(qbo["Id"]), "sync_token": str(qbo.get("SyncToken", "0")),
                                  "qbo_status": "active"}
        if customer_ref:
            values["customer_ref"] = customer_ref
        with begin(self.engine) as conn:
            self._upsert(conn, aggregate_type, aggregate_id, values, version=version)

    def clear_pending(self, aggregate_type: str, aggregate_id: str) -> None:
        """A pending create turned out never to have reached QBO."""
        with begin(self.engine) as conn:
            conn.execute(update(entity_map).where(self._key(aggregate_type, aggregate_id)).values(
                pending_requestid=None, pending_since=None, updated_at=_now()))

    def mark_status(self, aggregate_type: str, aggregate_id: str, status: str) -> None:
        """What QBO did to a mapped entity by itself (an invoice voided there): the map follows, ids kept."""
        with begin(self.engine) as conn:
            conn.execute(update(entity_map).where(self._key(aggregate_type, aggregate_id)).values(
                qbo_status=status, updated_at=_now()))

    def forget(self, aggregate_type: str, aggregate_id: str, *, status: str = "deleted") -> None:
        """The mapped QBO entity is gone (deleted by hand, or removed by reconcile): the next event creates
        anew. ``last_version`` stays, so older events are still skipped."""
        with begin(self.engine) as conn:
            conn.execute(update(entity_map).where(self._key(aggregate_type, aggregate_id)).values(
                qbo_id=None, sync_token=None, qbo_status=status, pending_requestid=None, pending_since=None,
                updated_at=_now()))

    # -- resolved references (customers, items, vendors, accounts) and operator overrides --------------

    def ref(self, kind: str, key: str) -> str | None:
        with connect(self.engine) as conn:
            return conn.execute(select(qbo_refs.c.qbo_id).where(
                qbo_refs.c.realm_id == self.realm_id, qbo_refs.c.kind == kind,
                qbo_refs.c.key == key)).scalar()

    def set_ref(self, kind: str, key: str, qbo_id: str, name: str | None = None) -> None:
        with begin(self.engine) as conn:
            stmt = self._insert(conn, qbo_refs).values(realm_id=self.realm_id, kind=kind, key=key, qbo_id=qbo_id,
                                                       name=name, updated_at=_now())
            conn.execute(stmt.on_conflict_do_update(
                index_elements=[qbo_refs.c.realm_id, qbo_refs.c.kind, qbo_refs.c.key],
                set_={"qbo_id": qbo_id, "name": name, "updated_at": _now()}))

    def delete_ref(self, kind: str, key: str) -> int:
        with begin(self.engine) as conn:
            return conn.execute(delete(qbo_refs).where(qbo_refs.c.realm_id == self.realm_id,
                                                       qbo_refs.c.kind == kind, qbo_refs.c.key == key)).rowcount

    def refs(self, kind: str | None = None) -> list[dict[str, Any]]:
        with connect(self.engine) as conn:
            stmt = select(qbo_refs).where(qbo_refs.c.realm_id == self.realm_id)
            if kind:
                stmt = stmt.where(qbo_refs.c.kind == kind)
            return [dict(r._mapping) for r in conn.execute(stmt.order_by(qbo_refs.c.kind, qbo_refs.c.key))]

    def set_override(self, kind: str, key: str, target: str) -> None:
        """An operator's mapping (``ttsync map set``): ``kind`` e.g. "expense_account", ``key`` as matched."""
        self.set_ref(OVERRIDE + kind, key.strip().lower(), target, target)

    def delete_override(self, kind: str, key: str) -> int:
        return self.delete_ref(OVERRIDE + kind, key.strip().lower())

    def overrides(self) -> dict[tuple[str, str], str]:
        """Every operator override of this realm (``ttsync map set``), {(kind, key): target}, in one read."""
        with connect(self.engine) as conn:
            rows = conn.execute(select(qbo_refs.c.kind, qbo_refs.c.key, qbo_refs.c.name).where(
                qbo_refs.c.realm_id == self.realm_id, qbo_refs.c.kind.startswith(OVERRIDE, autoescape=True)))
            return {(r.kind.removeprefix(OVERRIDE), r.key): r.name for r in rows}

    def purge_processed(self, older_than: dt.timedelta) -> int:
        """Processed events, and notes of dead-lettered versions, older than ``older_than``."""
        with begin(self.engine) as conn:
            conn.execute(delete(dead_lettered).where(dead_lettered.c.dead_lettered_at < _now() - older_than))
            return conn.execute(delete(processed_events).where(
                processed_events.c.processed_at < _now() - older_than)).rowcount
