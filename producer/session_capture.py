"""Capture from Python code: SQLAlchemy session hooks that write the outbox in the same transaction.

The twin of the database triggers (``trigger_capture``), with the same rules: one event per aggregate per
transaction, built from the committed state at commit time; ``created`` / ``updated`` / ``deleted`` from the
state before and after; the root row locked on PostgreSQL so versions follow commit order. TimeTracker
registers its audit-log listeners on ``Session`` in ``app/__init__.py``; ours sit beside them::

    from producer.session_capture import install_session_capture
    install_session_capture(db.session, source="acme-timetracker")   # or a Session class / sessionmaker
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, inspect, select, text
from sqlalchemy.orm import Session

from producer.aggregate_snapshots import AGGREGATES, TABLE_TO_AGGREGATES, snapshot
from producer.outbox_writer import write_event

ORIGIN_INFO_KEY = "ttsync.origin"  # session.info key: who makes this transaction's changes (e.g. the importer)
_PENDING = "ttsync_pending"
_UNKNOWN = object()  # before-state we could not read (the aggregate id appeared only after a flush)


@dataclass
class SessionCapture:
    """Handle returned by ``install_session_capture``; ``remove()`` takes the listeners off again."""

    target: Any
    source: str

    def remove(self) -> None:
        for name, fn in self._listeners():
            if event.contains(self.target, name, fn):
                event.remove(self.target, name, fn)

    def _listeners(self) -> list[tuple[str, Any]]:
        return [
            ("before_flush", self.before_flush),
            ("after_flush", self.after_flush),
            ("do_orm_execute", self.do_orm_execute),
            ("before_commit", self.before_commit),
            ("after_rollback", self.after_rollback),
        ]

    # -- hooks ---------------------------------------------------------------------------------------

    def before_flush(self, session: Session, _ctx: Any, _instances: Any) -> None:
        pending = session.info.setdefault(_PENDING, {})
        for obj in _changed(session):
            for agg_type, agg_id in _aggregate_ids(obj, include_old=True):
                if agg_id is not None:
                    self._note(session, pending, agg_type, agg_id)

    def do_orm_execute(self, state: Any) -> None:
        """Bulk ``update()`` / ``delete()`` through the ORM (``session.execute(update(Invoice)...)``,
        ``Query.update``) changes rows the session never loads, so before_flush cannot see them: note the
        aggregates of the rows its WHERE clause selects, before it runs (and the new owner a SET names)."""
        if not (state.is_update or state.is_delete):
            return
        stmt = state.statement
        table = getattr(stmt, "table", None)
        targets = TABLE_TO_AGGREGATES.get(getattr(table, "name", ""), ())
        if not targets or table is None:
            return
        session = state.session
        pending = session.info.setdefault(_PENDING, {})
        values = {getattr(k, "key", k): v for k, v in (getattr(stmt, "_values", None) or {}).items()}
        for agg_type, column in targets:
            ids = session.execute(select(table.c[column]).where(stmt.whereclause) if stmt.whereclause is not None
                                  else select(table.c[column])).scalars().all()
            moved_to = getattr(values.get(column), "value", None)
            for agg_id in {*ids, *([moved_to] if moved_to is not None else [])}:
                if agg_id is not None:
                    self._note(session, pending, agg_type, agg_id)

    def after_flush(self, session: Session, _ctx: Any) -> None:
        # Ids of rows inserted by this flush are known only now; such an aggregate did not exist before
        # when its root row is among the new objects.
        pending = session.info.setdefault(_PENDING, {})
        roots_first = sorted(session.new, key=lambda o: not _is_root_row(o))
        for obj in roots_first:
            for agg_type, agg_id in _aggregate_ids(obj, include_old=False):
                key = (agg_type, str(agg_id))
                if agg_id is None or key in pending:
                    continue
                is_root = AGGREGATES[agg_type].root.table == obj.__table__.name
                pending[key] = None if is_root else _UNKNOWN

    def before_commit(self, session: Session) -> None:
        if session.in_nested_transaction():
            return  # a savepoint: the outer commit writes the events
        # before_commit runs before the commit's own flush: flush now so the changes are noted and the
        # after-state includes them.
        session.flush()
        if not session.info.get(_PENDING):
            return
        pending: dict[tuple[str, str], Any] = session.info.pop(_PENDING, {})
        conn = session.connection()
        for (agg_type, agg_id), before in sorted(pending.items()):
            after = snapshot(conn, agg_type, agg_id)
            action, payload = decide(before, after)
            if action is None:
                continue
            write_event(
                conn,
                aggregate_type=agg_type,
                aggregate_id=agg_id,
                action=action,
                payload=payload,
                source=self.source,
                headers={"capture": "sqlalchemy"},
                # Who made the change: the importer marks its sessions (ORIGIN_INFO_KEY), the export skips them.
                origin=session.info.get(ORIGIN_INFO_KEY),
            )

    def after_rollback(self, session: Session) -> None:
        if not session.in_transaction():
            session.info.pop(_PENDING, None)

    def _note(self, session: Session, pending: dict[tuple[str, str], Any], agg_type: str, agg_id: Any) -> None:
        key = (agg_type, str(agg_id))
        if key in pending:
            return
        conn = session.connection()
        if conn.dialect.name == "postgresql":
            table = AGGREGATES[agg_type].root.table
            conn.execute(text(f'SELECT 1 FROM "{table}" WHERE "id" = :id FOR NO KEY UPDATE'), {"id": int(agg_id)})
        pending[key] = snapshot(conn, agg_type, agg_id)


def decide(before: Any, after: dict[str, Any] | None) -> tuple[str | None, dict[str, Any]]:
    """The event an aggregate's before/after states call for (same rules as ttsync_capture_flush)."""
    if after is None and before is None:
        return None, {}
    if after is None:
        return ("deleted", before) if before is not _UNKNOWN else (None, {})
    if before is None:
        return "created", after
    if before is not _UNKNOWN and before == after:
        return None, {}
    return "updated", after


def _changed(session: Session) -> Iterable[Any]:
    yield from session.new
    yield from (o for o in session.dirty if session.is_modified(o))
    yield from session.deleted


def _aggregate_ids(obj: Any, *, include_old: bool) -> list[tuple[str, Any]]:
    table = getattr(getattr(obj, "__table__", None), "name", None)
    out: list[tuple[str, Any]] = []
    for agg_type, column in TABLE_TO_AGGREGATES.get(table or "", ()):
        state = inspect(obj)
        value = getattr(obj, column, None)
        if value is None and column != "id":
            value = _id_through_relationship(obj, column)
        out.append((agg_type, value))
        if include_old and column != "id" and state.persistent:
            for old in state.attrs[column].history.deleted or ():
                if old is not None and old != value:
                    out.append((agg_type, old))
    return out


def _is_root_row(obj: Any) -> bool:
    table = getattr(getattr(obj, "__table__", None), "name", None)
    return any(AGGREGATES[t].root.table == table for t, _ in TABLE_TO_AGGREGATES.get(table or "", ()))


def _id_through_relationship(obj: Any, column: str) -> Any:
    """``item.invoice_id`` is unset before the flush when only ``item.invoice`` was assigned."""
    mapper = inspect(obj).mapper
    for rel in mapper.relationships:
        if any(c.key == column for c in rel.local_columns):
            target = getattr(obj, rel.key, None)
            if target is not None and inspect(target).persistent:
                return inspect(target).identity[0]
    return None


def install_session_capture(target: Any = Session, *, source: str = "timetracker") -> SessionCapture:
    """Listen on ``target`` (a Session class, sessionmaker, scoped_session or session). One call, idempotent
    per target: installing twice on the same target replaces nothing and adds nothing."""
    existing = getattr(target, "_ttsync_capture", None)
    if isinstance(existing, SessionCapture):
        return existing
    capture = SessionCapture(target=target, source=source)
    for name, fn in capture._listeners():
        event.listen(target, name, fn)
    try:
        target._ttsync_capture = capture
    except (AttributeError, TypeError):
        pass  # some targets refuse new attributes; idempotence then rests on the caller
    return capture
