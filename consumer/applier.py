"""Apply one event to QBO, exactly once in effect.

1. An event already processed (by id) is a no-op; one not newer than what the entity map holds is skipped.
2. ``lifecycle.decide`` picks the operation; ``references`` resolves ids; ``mapping`` builds the body.
3. Every write carries a requestid derived from (event id, operation, body). Before a create, the entity map
   records a pending intent: if we crash after QBO wrote but before we recorded it, the redelivered event
   finds the entity by its natural key (DocNumber, marker) and updates it instead of creating a second one.
4. The outcome is recorded in one transaction (entity map + processed event); only then may the caller
   commit the Kafka offset.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog

from consumer.errors import DependencyNotReady, QboUnavailable, QboValidationFault, StaleSyncToken
from consumer.lifecycle import Action, Decision, Mapped, SyncPolicy, decide
from consumer.mapping import (
    MARKER_RE,
    InvoiceRefs,
    MappingOptions,
    PaymentRefs,
    PurchaseRefs,
    carries,
    customer_request,
    expense_doc_number,
    invoice_request,
    legacy_match,
    legacy_qbo_id,
    marker,
    payment_request,
    payment_type,
    purchase_request,
    readable_state,
    request_id,
    settlement_marker,
    settlement_request,
    stale_subtotal_gap,
)
from consumer.qbo_client import DuplicateRequestId, QboClient, quote
from consumer.references import ReferenceResolver
from consumer.state_store import StateStore
from schemas.events import ClientState, EventEnvelope, ExpenseState, InvoiceState, PaymentState

log = structlog.get_logger("ttsync.apply")

_CRASH_AT = os.environ.get("TTSYNC_TEST_CRASH_AT", "")
_crash_countdown = int(os.environ.get("TTSYNC_TEST_CRASH_AFTER", "1"))


def crash_point(name: str) -> None:
    """Fault-injection hook for the crash tests: SIGKILL ourselves at a named point (never set in production)."""
    global _crash_countdown
    if name == _CRASH_AT:
        _crash_countdown -= 1
        if _crash_countdown <= 0:
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class PlannedWrite:
    """A create or sparse update ready to go into a QBO batch request (see ``apply_batch``)."""

    event: EventEnvelope
    entity: str
    operation: str  # create | update
    body: dict[str, Any]
    requestid: str
    customer_ref: str | None = None


@dataclass(frozen=True)
class Outcome:
    result: str  # created | updated | adopted | voided | deleted | deactivated | skipped | duplicate
    qbo_id: str | None = None
    reason: str = ""


class EventApplier:
    def __init__(self, client: QboClient, store: StateStore, resolver: ReferenceResolver, policy: SyncPolicy,
                 options: MappingOptions, *, stale_retries: int = 3, adopt_legacy: bool = True) -> None:
        self.client = client
        self.store = store
        self.resolver = resolver
        self.policy = policy
        self.options = options
        self.stale_retries = stale_retries
        self.adopt_legacy = adopt_legacy
        self._planning = False
        self._generation = ""

    def _rid(self, event: EventEnvelope, operation: str, body: Any = None) -> str:
        return request_id(event.event_id, operation, body, self._generation)

    def plan(self, event: EventEnvelope, generation: str = "") -> PlannedWrite | Outcome:
        """Like ``apply``, but a plain create or update is returned instead of sent, for a batch. Anything
        else (skips, duplicates, voids, deletes, creates that must first look for a lost attempt) is done now."""
        self._planning = True
        try:
            return self.apply(event, generation)  # type: ignore[return-value]
        finally:
            self._planning = False

    def apply_batch(self, writes: list[PlannedWrite]) -> list[Outcome | None]:
        """Send up to 30 planned writes in one QBO batch request. Per write: its Outcome, or None when it must
        go through ``apply`` on its own (a per-item Fault: the single path re-reads, recovers or dead-letters).
        A failure of the whole request raises; the caller then applies each write on its own, which is safe:
        creates were marked pending and are looked up by natural key before any second create."""
        for w in writes:
            if w.operation == "create":
                self.store.mark_pending(w.event.aggregate_type, w.event.aggregate_id, w.requestid)
        items = [{"bId": str(i), "operation": w.operation, w.entity: w.body} for i, w in enumerate(writes)]
        batch_id = str(uuid.uuid5(uuid.NAMESPACE_OID, ",".join(w.requestid for w in writes)))
        answers = {str(a.get("bId")): a for a in self.client.batch(items, batch_id)}
        crash_point("after_qbo_batch")
        out: list[Outcome | None] = []
        for i, w in enumerate(writes):
            answer = answers.get(str(i), {})
            entity = answer.get(w.entity)
            if not isinstance(entity, dict):
                log.info("batch_item_failed", entity=w.entity, aggregate_id=w.event.aggregate_id,
                         fault=json.dumps(answer.get("Fault"))[:500])
                out.append(None)
                continue
            result = "created" if w.operation == "create" else "updated"
            self.store.record(w.event, result, qbo=entity, status="active", customer_ref=w.customer_ref)
            out.append(Outcome(result, str(entity["Id"]), "batch"))
        return out

    def apply(self, event: EventEnvelope, generation: str = "") -> Outcome:
        """``generation``: which delivery of the event this is (see mapping.request_id); "" for the first."""
        self._generation = generation
        processed, mapped = self.store.lookup(event.event_id, event.aggregate_type, event.aggregate_id)
        if processed:
            return Outcome("duplicate", reason="event already processed")
        decision = decide(event, mapped, self.policy)
        if decision.action is Action.SKIP and mapped is not None and mapped.pending_requestid and not mapped.in_qbo \
                and mapped.last_version < event.aggregate_version:
            # An earlier version's create is pending: it may have reached QBO with its answer lost, and that
            # version may still be on its way back from a retry topic (where it will then be skipped as older).
            # Settle what QBO holds before a cancel or delete is skipped as "never synced".
            mapped = self._resolve_pending(event, mapped)
            decision = decide(event, mapped, self.policy)
        if decision.action is Action.SKIP:
            log.info("event_skipped", event_id=str(event.event_id), event_type=event.event_type,
                     aggregate_id=event.aggregate_id, version=event.aggregate_version, reason=decision.reason)
            self.store.record(event, "skipped")
            return Outcome("skipped", mapped.qbo_id if mapped else None, decision.reason)
        state = readable_state(event.aggregate_type, event.payload, self.options)
        handler: Callable[..., Outcome] = getattr(self, f"_{event.aggregate_type}")
        outcome = handler(event, state, decision, mapped)
        if isinstance(outcome, PlannedWrite):
            return outcome  # type: ignore[return-value]
        log.info("event_applied", event_id=str(event.event_id), event_type=event.event_type,
                 aggregate_id=event.aggregate_id, version=event.aggregate_version, result=outcome.result,
                 qbo_id=outcome.qbo_id)
        return outcome

    def _resolve_pending(self, event: EventEnvelope, mapped: Mapped) -> Mapped:
        """What the entity map should say of an aggregate whose create is pending: the entity found in QBO by its
        marker (adopted), or nothing (the pending mark is cleared)."""
        found = self._find_by_marker(event)
        if found is not None:
            log.info("pending_create_found", entity=mapped.qbo_entity, qbo_id=found["Id"],
                     aggregate_id=event.aggregate_id, version=event.aggregate_version)
            self.store.adopt(event.aggregate_type, event.aggregate_id, found, version=mapped.last_version,
                             customer_ref=mapped.customer_ref)
        else:
            self.store.clear_pending(event.aggregate_type, event.aggregate_id)
        return self.store.mapped(event.aggregate_type, event.aggregate_id) or mapped

    def _find_by_marker(self, event: EventEnvelope) -> dict[str, Any] | None:
        """The QBO entity carrying this aggregate's marker, looked up by its natural key."""
        p = readable_state(event.aggregate_type, event.payload, self.options)
        mark = marker(event.aggregate_type, event.aggregate_id, self.options.source)
        if isinstance(p, InvoiceState):
            entity, where = "Invoice", f"DocNumber = {quote(p.invoice_number)}"
        elif isinstance(p, ExpenseState):
            entity, where = "Purchase", f"DocNumber = {quote(expense_doc_number(p.id))}"
        elif isinstance(p, PaymentState):
            entity, where = "Payment", f"TxnDate = {quote(p.payment_date.isoformat())}"
        else:
            name = customer_request(p, self.options)["DisplayName"]
            entity, where = "Customer", f"DisplayName IN ({quote(name)}, {quote(name + ' (customer)')})"
        rows = self.client.query(f"SELECT * FROM {entity} WHERE {where}", entity)
        note = "Notes" if entity == "Customer" else "PrivateNote"
        return next((r for r in rows if carries(r.get(note), mark) and not r.get("Voided")), None)

    # -- per aggregate ---------------------------------------------------------------------------------

    def _invoice(self, event: EventEnvelope, inv: InvoiceState, decision: Decision, mapped: Mapped | None) -> Outcome:
        if decision.action in (Action.VOID, Action.DELETE):
            assert mapped is not None
            self._void_settlement(event, inv.id)  # QBO voids no invoice with payments applied
            try:
                return self._void_or_delete(event, "Invoice", mapped, decision.action)
            except QboValidationFault as fault:
                # A refunded payment's void (another aggregate, another partition) may not have landed yet.
                if fault.code == "6000" and "payments applied" in f"{fault} {fault.body}":
                    raise DependencyNotReady(f"invoice {inv.id}: QBO still holds payments applied to it (their "
                                             f"voids may follow): {fault}") from fault
                raise
        customer = self.resolver.customer(inv.client_id, inv.client, inv.client_name, inv.client_email,
                                          currency=inv.currency_code)
        body = invoice_request(inv, InvoiceRefs(customer, self.resolver.item()), self.options)
        if gap := stale_subtotal_gap(inv):
            log.warning("invoice_subtotal_stale", invoice_id=inv.id, invoice_number=inv.invoice_number,
                        subtotal=str(inv.subtotal), difference=str(gap),
                        action="an adjustment line keeps QBO at TimeTracker's total; recalculate it in TimeTracker")
        mark = marker("invoice", inv.id, self.options.source)

        def find() -> dict[str, Any] | None:
            rows = self.client.query(f"SELECT * FROM Invoice WHERE DocNumber = {quote(body['DocNumber'])}", "Invoice")
            return next((r for r in rows if carries(r.get("PrivateNote"), mark)
                         or (r.get("CustomerRef") or {}).get("value") == customer), None)

        def legacy() -> dict[str, Any] | None:
            # TimeTracker's connector sent no DocNumber and no tax: same customer, date and one of the totals.
            rows = self.client.query(f"SELECT * FROM Invoice WHERE CustomerRef = {quote(customer)} "
                                     f"AND TxnDate = {quote(body['TxnDate'])}", "Invoice")
            return self._legacy_pick(event, "Invoice", *legacy_match(rows, {inv.subtotal, inv.total_amount}, lone=True))

        planning = self._planning

        def settle(written: dict[str, Any]) -> None:
            # Before the event is recorded as done: a settlement QBO cannot take yet (a refunded payment's void
            # still on its way) fails the event, which comes back from a retry topic and settles then.
            self._settle(event, inv, customer, str(written["Id"]))

        try:
            if inv.unrecorded_payment == 0:
                self._void_settlement(event, inv.id)  # undo a "mark as paid" first: it may hold the total down
            else:
                self._planning = False  # the settlement needs the invoice written first: not part of a batch
            return self._upsert(event, "Invoice", body, decision, mapped, find, customer_ref=customer,
                                legacy=legacy, after_write=settle if inv.unrecorded_payment > 0 else None)
        except QboValidationFault as fault:
            # A payment (another aggregate, another partition) was applied against a later version of this
            # invoice, and this older, smaller one no longer fits under it. The later version is normally right
            # behind on this partition: wait in the retry topics, where this one then turns out to be older and
            # is skipped. An invoice TimeTracker really cut below its payments is dead-lettered in the end.
            if _payment_conflict(fault):
                raise DependencyNotReady(f"invoice {inv.id} v{event.aggregate_version}: QBO holds payments above its "
                                         f"total (a newer version may follow): {fault}") from fault
            raise
        finally:
            self._planning = planning

    def _expense(self, event: EventEnvelope, exp: ExpenseState, decision: Decision, mapped: Mapped | None) -> Outcome:
        if decision.action in (Action.VOID, Action.DELETE):
            assert mapped is not None
            return self._void_or_delete(event, "Purchase", mapped, Action.DELETE)
        refs = PurchaseRefs(
            paying_account_id=self.resolver.paying_account(payment_type(exp, self.options), exp.payment_method),
            expense_account_id=self.resolver.expense_account(exp.category),
            vendor_id=self.resolver.vendor(exp.vendor),
        )
        body = purchase_request(exp, refs, self.options)
        mark = marker("expense", exp.id, self.options.source)

        def find() -> dict[str, Any] | None:
            doc = quote(expense_doc_number(exp.id))
            rows = self.client.query(f"SELECT * FROM Purchase WHERE DocNumber = {doc}", "Purchase")
            return next((r for r in rows if carries(r.get("PrivateNote"), mark)), None)

        def legacy() -> dict[str, Any] | None:
            rows = self.client.query(f"SELECT * FROM Purchase WHERE TxnDate = {quote(body['TxnDate'])}", "Purchase")
            return self._legacy_pick(event, "Purchase",
                                     *legacy_match(rows, {exp.amount, exp.amount + (exp.tax_amount or 0)}))

        return self._upsert(event, "Purchase", body, decision, mapped, find, legacy=legacy)

    def _payment(self, event: EventEnvelope, pay: PaymentState, decision: Decision, mapped: Mapped | None) -> Outcome:
        if decision.action in (Action.VOID, Action.DELETE):
            assert mapped is not None
            return self._void_or_delete(event, "Payment", mapped, decision.action)
        invoice = self.store.mapped("invoice", str(pay.invoice_id))
        if invoice is None or not invoice.in_qbo:
            raise DependencyNotReady(f"payment {pay.id}: invoice {pay.invoice_id} is not in QBO yet")
        customer = invoice.customer_ref or str(
            self.client.read("Invoice", invoice.qbo_id or "")["CustomerRef"]["value"])
        body = payment_request(pay, PaymentRefs(customer, invoice.qbo_id or "", self.resolver.deposit_account()),
                               self.options)
        mark = marker("payment", pay.id, self.options.source)

        def find() -> dict[str, Any] | None:
            rows = self.client.query(f"SELECT * FROM Payment WHERE CustomerRef = {quote(customer)} "
                                     f"AND TxnDate = {quote(body['TxnDate'])}", "Payment")
            return next((r for r in rows if carries(r.get("PrivateNote"), mark)), None)

        try:
            return self._upsert(event, "Payment", body, decision, mapped, find)
        except QboValidationFault as fault:
            # The invoice and its payment are separate aggregates on separate partitions: the payment may
            # arrive before the invoice's newer, larger total did. Wait for it in the retry topics; a payment
            # that really exceeds its invoice is dead-lettered when they run out.
            if _payment_conflict(fault):
                raise DependencyNotReady(f"payment {pay.id}: exceeds what QBO has as the balance of invoice "
                                         f"{pay.invoice_id} (its newer version may not be applied yet): {fault}"
                                         ) from fault
            raise

    def _client(self, event: EventEnvelope, client: ClientState, decision: Decision, mapped: Mapped | None) -> Outcome:
        if decision.action is Action.DEACTIVATE:
            assert mapped is not None and mapped.qbo_id
            result = self._write_with_fresh_token(event, "Customer", mapped.qbo_id, mapped.sync_token,
                                                  {"Active": False}, "deactivate")
            self.store.record(event, "deactivated", qbo=result, status="inactive")
            return Outcome("deactivated", result["Id"])
        currency = (client.invoice_currency or self.options.default_currency) \
            if decision.action is Action.CREATE else None
        body = customer_request(client, self.options, currency=currency)

        def find() -> dict[str, Any] | None:
            rows = self.client.query(f"SELECT * FROM Customer WHERE DisplayName = {quote(body['DisplayName'])}",
                                     "Customer")
            return rows[0] if rows else None

        return self._upsert(event, "Customer", body, decision, mapped, find)

    def _void_settlement(self, event: EventEnvelope, invoice_id: int) -> None:
        held = self.store.mapped(SETTLEMENT, str(invoice_id))
        if held is not None and held.in_qbo and held.qbo_status == "active":
            self._void_or_delete(event, "Payment", held, Action.VOID, record_as=SETTLEMENT)
            log.info("settlement_voided", invoice_id=invoice_id, qbo_id=held.qbo_id)

    def _settle(self, event: EventEnvelope, inv: InvoiceState, customer: str, invoice_qbo_id: str) -> None:
        """Keep QBO's Balance at TimeTracker's ``total_amount - amount_paid`` when part of ``amount_paid`` has no
        payment row ("mark as paid"): one Payment per invoice, the *settlement*, holds that part. Created,
        changed with the amount, voided when the part goes back to zero (a refund, or the status undone).
        Written with requestids derived from the invoice event, so a redelivery changes nothing."""
        want = inv.unrecorded_payment
        held = self.store.mapped(SETTLEMENT, str(inv.id))
        active = held is not None and held.in_qbo and held.qbo_status == "active"
        ceiling = inv.total_amount - (inv.payments_completed or Decimal("0"))
        if want > ceiling:
            log.warning("settlement_capped", invoice_id=inv.id, amount_paid=str(inv.amount_paid),
                        capped_to=str(ceiling), reason="QBO cannot hold an invoice paid above its total")
            want = max(Decimal("0"), ceiling)
        if want == 0:
            self._void_settlement(event, inv.id)
            return
        body = settlement_request(inv, want, customer, invoice_qbo_id, self.options)
        if active:
            assert held is not None and held.qbo_id
            result = self._write_with_fresh_token(event, "Payment", held.qbo_id, held.sync_token, body, "settle")
        else:
            mark = settlement_marker(inv.id, self.options.source)
            found = None
            if held is not None and held.pending_requestid:
                rows = self.client.query(f"SELECT * FROM Payment WHERE CustomerRef = {quote(customer)} "
                                         f"AND TxnDate = {quote(body['TxnDate'])}", "Payment")
                found = next((r for r in rows if carries(r.get("PrivateNote"), mark)
                              and not r.get("Voided")), None)
            if found is not None:
                result = self._write_with_fresh_token(event, "Payment", str(found["Id"]), str(found["SyncToken"]),
                                                      body, "settle")
            else:
                rid = self._rid(event, "settle:create", body)
                self.store.mark_pending(SETTLEMENT, str(inv.id), rid)
                try:
                    result = self.client.create("Payment", body, rid)
                except DuplicateRequestId:
                    raise QboUnavailable(f"settlement of invoice {inv.id}: requestid {rid} seen, payment not found "
                                         "yet") from None
        self.store.adopt(SETTLEMENT, str(inv.id), result, customer_ref=customer)
        log.info("settlement_written", invoice_id=inv.id, amount=str(want), qbo_id=result.get("Id"))

    # -- the write patterns --------------------------------------------------------------------------

    def _upsert(self, event: EventEnvelope, entity: str, body: dict[str, Any], decision: Decision,
                mapped: Mapped | None, find: Callable[[], dict[str, Any] | None],
                customer_ref: str | None = None,
                legacy: Callable[[], dict[str, Any] | None] | None = None,
                after_write: Callable[[dict[str, Any]], None] | None = None) -> Outcome:
        """Create or sparse-update ``entity``; ``after_write`` runs on the written entity before the event is
        recorded as done (a write that belongs to the same event)."""
        if decision.action is Action.CREATE and not (mapped and mapped.pending_requestid):
            # Taking over from TimeTracker's own connector: what it already created is adopted, not doubled.
            existing = self._legacy_entity(event, entity, legacy)
            if existing is not None:
                return self._adopt_and_update(event, entity, existing, body, customer_ref, after_write)
        if self._planning and decision.action is Action.UPDATE and mapped is not None and mapped.qbo_id \
                and mapped.sync_token:
            full = {**body, "Id": mapped.qbo_id, "SyncToken": mapped.sync_token, "sparse": True}
            return PlannedWrite(event, entity, "update", full,  # type: ignore[return-value]
                                self._rid(event, f"update:{mapped.sync_token}", full), customer_ref)
        if self._planning and decision.action is Action.CREATE and not (mapped and mapped.pending_requestid):
            return PlannedWrite(event, entity, "create", body,  # type: ignore[return-value]
                                self._rid(event, "create", body), customer_ref)
        if decision.action is Action.UPDATE and mapped is not None and mapped.qbo_id:
            result = self._write_with_fresh_token(event, entity, mapped.qbo_id, mapped.sync_token, body, "update")
            if after_write is not None:
                after_write(result)
            self.store.record(event, "updated", qbo=result, status="active", customer_ref=customer_ref)
            return Outcome("updated", result["Id"])
        # A create. Did an earlier attempt write it already? (crash after the write, or a lost answer)
        if mapped is not None and mapped.pending_requestid:
            existing = find()
            if existing is not None:
                return self._adopt_and_update(event, entity, existing, body, customer_ref, after_write)
        rid = self._rid(event, "create", body)
        self.store.mark_pending(event.aggregate_type, event.aggregate_id, rid)
        try:
            created = self.client.create(entity, body, rid)
        except DuplicateRequestId:
            existing = find()
            if existing is None:
                raise QboUnavailable(f"QBO says requestid {rid} was seen, but the {entity} is not found yet") from None
            return self._adopt_and_update(event, entity, existing, body, customer_ref, after_write)
        except QboValidationFault as fault:
            # 6140 duplicate DocNumber / 6240 duplicate name: ours from a lost attempt, or someone else's.
            existing = find() if fault.code in ("6140", "6240") else None
            if existing is None:
                raise
            return self._adopt_and_update(event, entity, existing, body, customer_ref, after_write)
        crash_point("after_qbo_create")
        if after_write is not None:
            after_write(created)
        self.store.record(event, "created", qbo=created, status="active", customer_ref=customer_ref)
        return Outcome("created", created["Id"])

    def _legacy_entity(self, event: EventEnvelope, entity: str,
                       legacy: Callable[[], dict[str, Any] | None] | None) -> dict[str, Any] | None:
        """The QBO entity TimeTracker's old connector made for this record: by the id it stored in
        ``integration_metadata``, else (for a snapshot of a record that existed before ttsync) by a unique
        match on customer, date and amount. That query runs for a snapshot, and for the first change of a record
        created long before it (``LEGACY_AGE``), which the snapshot may not have reached yet; a record born
        under ttsync costs no extra QBO call."""
        qbo_id = legacy_qbo_id(event.aggregate_type, event.payload)
        if qbo_id is not None:
            try:
                found = self.client.read(entity, qbo_id)
            except QboValidationFault as fault:
                if fault.code not in ("610", "2030"):  # gone or never there: create it anew
                    raise
                log.info("legacy_id_not_in_qbo", entity=entity, qbo_id=qbo_id, aggregate_id=event.aggregate_id)
            else:
                owner = MARKER_RE.search(found.get("PrivateNote") or "")
                if owner is None or (owner.group(1), owner.group(2)) == (event.aggregate_type, event.aggregate_id):
                    return found
                log.warning("legacy_id_owned_by_another_record", entity=entity, qbo_id=qbo_id,
                            aggregate_id=event.aggregate_id, owner=owner.group(0))
        if legacy is not None and self.adopt_legacy and (event.action == "snapshot" or _predates_ttsync(event)):
            return legacy()
        return None

    def _legacy_pick(self, event: EventEnvelope, entity: str, found: dict[str, Any] | None,
                     ambiguous: list[str]) -> dict[str, Any] | None:
        if ambiguous:
            # ttsync creates its own; the old one stays in QBO unmarked, where reconcile cannot tie it to a record.
            log.warning("legacy_match_ambiguous", entity=entity, aggregate_id=event.aggregate_id,
                        candidates=ambiguous, action="creating; check these QBO entities for a twin")
        return found

    def _adopt_and_update(self, event: EventEnvelope, entity: str, existing: dict[str, Any], body: dict[str, Any],
                          customer_ref: str | None,
                          after_write: Callable[[dict[str, Any]], None] | None = None) -> Outcome:
        log.info("entity_adopted", entity=entity, qbo_id=existing["Id"], aggregate_id=event.aggregate_id)
        result = self._write_with_fresh_token(event, entity, str(existing["Id"]), str(existing["SyncToken"]), body,
                                              "update")
        if after_write is not None:
            after_write(result)
        self.store.record(event, "adopted", qbo=result, status="active", customer_ref=customer_ref)
        return Outcome("adopted", result["Id"])

    def _write_with_fresh_token(self, event: EventEnvelope, entity: str, qbo_id: str, sync_token: str | None,
                                body: dict[str, Any], operation: str) -> dict[str, Any]:
        """A sparse update; on a stale SyncToken (5010) re-read the entity and try again."""
        body = {k: v for k, v in body.items() if k not in CREATE_ONLY.get(entity, ())}
        token = sync_token or self.client.read(entity, qbo_id)["SyncToken"]
        for _ in range(self.stale_retries + 1):
            full = {**body, "Id": qbo_id, "SyncToken": token, "sparse": True}
            try:
                return self.client.update(entity, full, self._rid(event, f"{operation}:{token}", full))
            except StaleSyncToken:
                token = self.client.read(entity, qbo_id)["SyncToken"]
            except DuplicateRequestId:
                return self.client.read(entity, qbo_id)  # this very write was applied before
        raise StaleSyncToken(f"{entity} {qbo_id} kept changing under us ({self.stale_retries} re-reads)")

    def _void_or_delete(self, event: EventEnvelope, entity: str, mapped: Mapped, action: Action, *,
                        record_as: str | None = None) -> Outcome:
        qbo_id = mapped.qbo_id or ""
        token = mapped.sync_token or self.client.read(entity, qbo_id)["SyncToken"]
        verb = "voided" if action is Action.VOID else "deleted"
        for _ in range(self.stale_retries + 1):
            rid = self._rid(event, f"{verb}:{token}")
            try:
                if action is Action.VOID:
                    result = self.client.void(entity, qbo_id, token, rid)
                else:
                    result = self.client.delete(entity, qbo_id, token, rid)
                break
            except StaleSyncToken:
                token = self.client.read(entity, qbo_id)["SyncToken"]
            except DuplicateRequestId:
                result = {"Id": qbo_id, "SyncToken": token}
                break
            except QboValidationFault as fault:
                if fault.code == "610" and action is Action.DELETE:  # already gone: the goal is reached
                    result = {"Id": qbo_id, "SyncToken": token}
                    break
                raise
        else:
            raise StaleSyncToken(f"{entity} {qbo_id} kept changing under us")
        done = {"Id": qbo_id, "SyncToken": result.get("SyncToken", token)}
        if record_as is not None:  # a write beside the event's own (the settlement): the event is not done yet
            self.store.forget(record_as, event.aggregate_id, status=verb)
            return Outcome(verb, qbo_id)
        self.store.record(event, verb, qbo=done, status=verb)
        return Outcome(verb, qbo_id)


# Fields QBO fixes at creation: a customer's currency (sending it again, even unchanged, risks a Fault when the
# customer was made elsewhere, e.g. by a person or for an invoice in another currency).
CREATE_ONLY = {"Customer": ("CurrencyRef",)}
SETTLEMENT = "settlement"  # entity-map type of the Payment that stands for amount_paid without payment rows
LEGACY_AGE = dt.timedelta(days=1)


def _predates_ttsync(event: EventEnvelope) -> bool:
    created = event.payload.get("created_at")
    try:
        born = dt.datetime.fromisoformat(str(created))
    except ValueError:
        return False
    born = born if born.tzinfo else born.replace(tzinfo=dt.UTC)
    occurred = event.occurred_at if event.occurred_at.tzinfo else event.occurred_at.replace(tzinfo=dt.UTC)
    return occurred - born > LEGACY_AGE


def _payment_conflict(fault: QboValidationFault) -> bool:
    """QBO's business-rule Fault (6000) for a payment above its invoice's balance, or an invoice cut below
    the payments applied to it."""
    text = f"{fault} {fault.body}".lower()
    return fault.code == "6000" and ("balance" in text or "already paid" in text)
