"""Carry a prepared ``Write`` out through the QBO port, exactly once in effect, and record it.

1. Every write carries a requestid derived from (event id, operation, body, delivery). Before a create, the
   entity map records a pending intent: if we crash after QBO wrote but before we recorded it, the redelivered
   event finds the entity by its natural key (``Write.lookup``) and updates it instead of creating a second one.
2. Fault 600 (requestid seen) and 6140/6240 (duplicate DocNumber / name) on a create: the entity is looked up and
   adopted. A stale SyncToken (5010): re-read and write again, a few times (``_with_fresh_token``, the one loop).
3. The outcome is recorded in one transaction (entity map + processed event); only then may the caller commit
   the Kafka offset. ``execute_batch`` sends up to 30 batchable writes in one QBO batch request."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import structlog

from consumer.crash_points import CrashHook, no_crash
from consumer.errors import DependencyNotReady, DuplicateRequestId, QboUnavailable, QboValidationFault, StaleSyncToken
from consumer.mapping import MappingOptions, settlement_marker, settlement_request
from consumer.qbo_port import QboPort, find_by_key
from consumer.qbo_queries import NaturalKey, select_where
from consumer.state_store import Recorded, StateStore
from consumer.writes import Operation, Outcome, Result, Write, sparse_body

log = structlog.get_logger("ttsync.apply")

SETTLEMENT = "settlement"  # entity-map type of the Payment that stands for amount_paid without payment rows
BATCH_LIMIT = 30  # QBO's items per batch request

_RESULT_OF = {Operation.CREATE: Result.CREATED, Operation.UPDATE: Result.UPDATED, Operation.ADOPT: Result.ADOPTED,
              Operation.VOID: Result.VOIDED, Operation.DELETE: Result.DELETED,
              Operation.DEACTIVATE: Result.DEACTIVATED}


class Executor:
    def __init__(self, qbo: QboPort, store: StateStore, options: MappingOptions, *, stale_retries: int = 3,
                 crash: CrashHook = no_crash) -> None:
        self.qbo = qbo
        self.store = store
        self.options = options
        self.stale_retries = stale_retries
        self.crash = crash

    def execute(self, w: Write) -> Outcome:
        try:
            return self._execute(w)
        except QboValidationFault as fault:
            if w.payments_may_block and payments_in_the_way(fault):
                # Another aggregate on another partition (a payment applied against a later version of this
                # invoice, a refunded payment's void, an invoice's newer and larger total) may not have landed
                # yet: wait in the retry topics. What really conflicts is dead-lettered when they run out.
                raise DependencyNotReady(
                    f"{w.event.aggregate_type} {w.event.aggregate_id} v{w.event.aggregate_version}: QBO refuses "
                    f"the {w.operation.value} over payments (what resolves it may follow): {fault}") from fault
            raise

    def _execute(self, w: Write) -> Outcome:
        if w.void_settlement_first:
            self._void_settlement(w)
        if w.operation in (Operation.VOID, Operation.DELETE):
            done = self._void_or_delete(w, w.entity, w.qbo_id or "", w.sync_token, w.operation)
            self.store.record(w.event, w.operation.value, qbo=done, status=w.operation.value)
            return Outcome(_RESULT_OF[w.operation], w.qbo_id)
        if w.operation is Operation.DEACTIVATE:
            written = self._update(w, w.entity, w.qbo_id or "", w.sync_token, w.body, "deactivate")
            self.store.record(w.event, Result.DEACTIVATED.value, qbo=written, status="inactive")
            return Outcome(Result.DEACTIVATED, str(written["Id"]))
        if w.operation is Operation.CREATE:
            written, result = self._create(w)
        else:
            if w.operation is Operation.ADOPT:
                log.info("entity_adopted", entity=w.entity, qbo_id=w.qbo_id, aggregate_id=w.event.aggregate_id)
            written, result = self._update(w, w.entity, w.qbo_id or "", w.sync_token, w.body), _RESULT_OF[w.operation]
        if w.settle is not None:
            # Before the event is recorded as done: a settlement QBO cannot take yet (a refunded payment's void
            # still on its way) fails the event, which comes back from a retry topic and settles then.
            self._settle(w, str(written["Id"]))
        self.store.record(w.event, result.value, qbo=written, status="active", customer_ref=w.customer_ref)
        return Outcome(result, str(written["Id"]))

    # -- the write patterns ----------------------------------------------------------------------------

    def _create(self, w: Write) -> tuple[dict[str, Any], Result]:
        rid = w.rid("create", w.body)
        self.store.mark_pending(w.event.aggregate_type, w.event.aggregate_id, rid)
        try:
            created = self.qbo.create(w.entity, w.body, rid)
        except DuplicateRequestId:
            existing = self._find(w.lookup)
            if existing is None:
                raise QboUnavailable(f"QBO says requestid {rid} was seen, but the {w.entity} is not found yet"
                                     ) from None
            return self._adopt(w, existing), Result.ADOPTED
        except QboValidationFault as fault:
            # 6140 duplicate DocNumber / 6240 duplicate name: ours from a lost attempt, or someone else's.
            existing = self._find(w.lookup) if fault.code in ("6140", "6240") else None
            if existing is None:
                raise
            return self._adopt(w, existing), Result.ADOPTED
        self.crash("after_qbo_create")
        return created, Result.CREATED

    def _find(self, key: NaturalKey | None) -> dict[str, Any] | None:
        return None if key is None else find_by_key(self.qbo, key)

    def _adopt(self, w: Write, existing: dict[str, Any]) -> dict[str, Any]:
        log.info("entity_adopted", entity=w.entity, qbo_id=existing["Id"], aggregate_id=w.event.aggregate_id)
        return self._update(w, w.entity, str(existing["Id"]), str(existing["SyncToken"]), w.body)

    def _update(self, w: Write, entity: str, qbo_id: str, token: str | None, body: dict[str, Any],
                label: str = "update") -> dict[str, Any]:
        """A sparse update."""

        def send(at: str) -> dict[str, Any]:
            full = sparse_body(entity, body, qbo_id, at)
            try:
                return self.qbo.update(entity, full, w.rid(f"{label}:{at}", full))
            except DuplicateRequestId:
                return self.qbo.read(entity, qbo_id)  # this very write was applied before

        return self._with_fresh_token(entity, qbo_id, token, send)

    def _void_or_delete(self, w: Write, entity: str, qbo_id: str, token: str | None,
                        operation: Operation) -> dict[str, Any]:
        verb = operation.value

        def send(at: str) -> dict[str, Any]:
            # The entity is part of the requestid: an invoice's void and its settlement's void belong to one event
            # and may share a SyncToken, and QBO would answer the second with the first's answer.
            rid = w.rid(f"{verb}:{entity}:{at}")
            try:
                if operation is Operation.VOID:
                    answer = self.qbo.void(entity, qbo_id, at, rid)
                else:
                    answer = self.qbo.delete(entity, qbo_id, at, rid)
            except DuplicateRequestId:
                answer = {}
            except QboValidationFault as fault:
                if not (fault.code == "610" and operation is Operation.DELETE):  # already gone: goal reached
                    raise
                answer = {}
            return {"Id": qbo_id, "SyncToken": str(answer.get("SyncToken", at))}

        return self._with_fresh_token(entity, qbo_id, token, send)

    def _with_fresh_token(self, entity: str, qbo_id: str, token: str | None,
                          send: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
        """``send`` at the SyncToken we hold (read when we hold none); on a stale one (5010), re-read the entity and
        send again, ``stale_retries`` times."""
        at = token or str(self.qbo.read(entity, qbo_id)["SyncToken"])
        for _ in range(self.stale_retries + 1):
            try:
                return send(at)
            except StaleSyncToken:
                at = str(self.qbo.read(entity, qbo_id)["SyncToken"])
        raise StaleSyncToken(f"{entity} {qbo_id} kept changing under us ({self.stale_retries} re-reads)")

    # -- the settlement: amount_paid without payment rows ------------------------------------------------

    def _void_settlement(self, w: Write) -> None:
        held = self.store.mapped(SETTLEMENT, w.event.aggregate_id)
        if held is not None and held.in_qbo and held.qbo_status == "active" and held.qbo_id:
            self._void_or_delete(w, "Payment", held.qbo_id, held.sync_token, Operation.VOID)
            self.store.forget(SETTLEMENT, w.event.aggregate_id, status=Operation.VOID.value)
            log.info("settlement_voided", invoice_id=w.event.aggregate_id, qbo_id=held.qbo_id)

    def _settle(self, w: Write, invoice_qbo_id: str) -> None:
        """Keep QBO's Balance at TimeTracker's ``total_amount - amount_paid`` when part of ``amount_paid`` has no
        payment row ("mark as paid"): one Payment per invoice, the *settlement*, holds that part. Created,
        changed with the amount, voided when the part goes back to zero (a refund, or the status undone).
        Written with requestids derived from the invoice event, so a redelivery changes nothing."""
        inv, customer = w.settle, w.customer_ref or ""
        assert inv is not None
        want = inv.unrecorded_payment
        ceiling = inv.total_amount - (inv.payments_completed or Decimal("0"))
        if want > ceiling:
            log.warning("settlement_capped", invoice_id=inv.id, amount_paid=str(inv.amount_paid),
                        capped_to=str(ceiling), reason="QBO cannot hold an invoice paid above its total")
            want = max(Decimal("0"), ceiling)
        if want == 0:
            self._void_settlement(w)
            return
        held = self.store.mapped(SETTLEMENT, str(inv.id))
        body = settlement_request(inv, want, customer, invoice_qbo_id, self.options)
        if held is not None and held.in_qbo and held.qbo_status == "active" and held.qbo_id:
            result = self._update(w, "Payment", held.qbo_id, held.sync_token, body, "settle")
        else:
            key = NaturalKey("Payment", select_where("Payment", CustomerRef=customer, TxnDate=body["TxnDate"]),
                             settlement_marker(inv.id, self.options.source), skip_voided=True)
            found = self._find(key) if held is not None and held.pending_requestid else None
            if found is not None:
                result = self._update(w, "Payment", str(found["Id"]), str(found["SyncToken"]), body, "settle")
            else:
                rid = w.rid("settle:create", body)
                self.store.mark_pending(SETTLEMENT, str(inv.id), rid)
                try:
                    result = self.qbo.create("Payment", body, rid)
                except DuplicateRequestId:
                    raise QboUnavailable(f"settlement of invoice {inv.id}: requestid {rid} seen, payment not found "
                                         "yet") from None
        self.store.adopt(SETTLEMENT, str(inv.id), result, customer_ref=customer)
        log.info("settlement_written", invoice_id=inv.id, amount=str(want), qbo_id=result.get("Id"))

    # -- a backlog: one batch request ------------------------------------------------------------------

    def execute_batch(self, writes: list[Write]) -> list[Outcome | None]:
        """Send up to 30 batchable writes in one QBO batch request. Per write: its Outcome, or None when it must
        go through ``execute`` on its own (a per-item Fault: the single path re-reads, recovers or dead-letters).
        A failure of the whole request raises; the caller then executes each write on its own, which is safe:
        creates were marked pending and are looked up by natural key before any second create."""
        assert len(writes) <= BATCH_LIMIT and all(w.batchable for w in writes)
        for w in writes:
            if w.void_settlement_first:
                self._void_settlement(w)
        self.store.mark_pending_many([(w.event.aggregate_type, w.event.aggregate_id, w.rid("create", w.body))
                                      for w in writes if w.operation is Operation.CREATE])
        bodies = [self._batch_body(w) for w in writes]
        items = [{"bId": str(i), "operation": w.batch_operation, w.entity: body}
                 for i, (w, body) in enumerate(zip(writes, bodies, strict=True))]
        batch_id = str(uuid.uuid5(uuid.NAMESPACE_OID, ",".join(
            w.rid("create" if w.operation is Operation.CREATE else f"update:{w.sync_token}", body)
            for w, body in zip(writes, bodies, strict=True))))
        answers = {str(a.get("bId")): a for a in self.qbo.batch(items, batch_id)}
        self.crash("after_qbo_batch")
        out: list[Outcome | None] = []
        recorded: list[Recorded] = []
        for i, w in enumerate(writes):
            answer = answers.get(str(i), {})
            entity = answer.get(w.entity)
            if not isinstance(entity, dict):
                log.info("batch_item_failed", entity=w.entity, aggregate_id=w.event.aggregate_id,
                         fault=json.dumps(answer.get("Fault"))[:500])
                out.append(None)
                continue
            result = _RESULT_OF[w.operation]
            if w.operation is Operation.ADOPT:
                log.info("entity_adopted", entity=w.entity, qbo_id=w.qbo_id, aggregate_id=w.event.aggregate_id)
            recorded.append(Recorded(w.event, result.value, entity, "active", w.customer_ref))
            out.append(Outcome(result, str(entity["Id"]), "batch"))
        # Before any failed item goes through the single path (which reads the entity map): one transaction.
        self.store.record_many(recorded)
        return out

    @staticmethod
    def _batch_body(w: Write) -> dict[str, Any]:
        if w.operation is Operation.CREATE:
            return w.body
        return sparse_body(w.entity, w.body, w.qbo_id or "", w.sync_token or "")


def payments_in_the_way(fault: QboValidationFault) -> bool:
    """QBO's business-rule Fault (6000) for a payment above its invoice's balance, an invoice cut below the
    payments applied to it, or an invoice voided with payments still applied."""
    text = f"{fault} {fault.body}".lower()
    return fault.code == "6000" and any(s in text for s in ("balance", "already paid", "payments applied"))
