"""Decide, resolve and build: what one event needs done in QBO, as a value (``Write``) or a final ``Outcome``.

1. An event already processed (by id) is a duplicate; ``lifecycle.decide`` picks the operation (or a skip).
2. An earlier version's create still pending is settled first: QBO may hold it with its answer lost.
3. Per aggregate type (``_BY_TYPE``): ``references`` resolves the ids, ``mapping`` builds the body, and a create
   becomes an adoption when QBO already holds the record (a lost attempt's, or TimeTracker's old connector's).

It reads QBO (lookups, references) and the state store, and writes only what it finds out about QBO (a found
pending create, a reference); the event's own write is ``consumer.execute``'s."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from consumer.errors import DependencyNotReady, EarlierVersionDeadLettered, MalformedEvent
from consumer.legacy_pool import LegacyPool
from consumer.lifecycle import EARLIER_VERSION_PENDING, Action, Decision, Mapped, SyncPolicy, decide
from consumer.mapping import (
    MARKER_RE,
    InvoiceRefs,
    MappingOptions,
    PaymentRefs,
    PurchaseRefs,
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
    stale_subtotal_gap,
)
from consumer.qbo_port import QboPort, find_by_key, read_if_present
from consumer.qbo_queries import NaturalKey, select_in, select_where
from consumer.references import ReferenceResolver
from consumer.state_store import StateStore
from consumer.writes import Operation, Outcome, Result, Write
from schemas.contract import ORIGIN_QBO_IMPORT
from schemas.events import ClientState, EventEnvelope, ExpenseState, InvoiceState, PaymentState

log = structlog.get_logger("ttsync.apply")

LEGACY_AGE = dt.timedelta(days=1)


@dataclass(frozen=True)
class Delivery:
    """One delivery of one event, with what the entity map held and what the lifecycle decided for it."""

    event: EventEnvelope
    generation: str
    decision: Decision
    mapped: Mapped | None

    def write(self, operation: Operation, entity: str, **fields: Any) -> Write:
        return Write(self.event, operation, entity, generation=self.generation, **fields)

    def removal(self, entity: str, operation: Operation, **fields: Any) -> Write:
        assert self.mapped is not None  # decide() voids or deletes only what the map holds
        return self.write(operation, entity, qbo_id=self.mapped.qbo_id, sync_token=self.mapped.sync_token, **fields)


class Preparer:
    def __init__(self, qbo: QboPort, store: StateStore, resolver: ReferenceResolver, policy: SyncPolicy,
                 options: MappingOptions, *, adopt_legacy: bool = True) -> None:
        self.qbo = qbo
        self.store = store
        self.resolver = resolver
        self.policy = policy
        self.options = options
        self.adopt_legacy = adopt_legacy
        self.legacy_pool = LegacyPool(qbo)  # the old connector's entities, read in bulk
        self._by_type: dict[str, Callable[[Delivery, Any], Write]] = {
            "invoice": self._invoice, "expense": self._expense, "payment": self._payment, "client": self._client,
        }

    def prepare(self, event: EventEnvelope, generation: str = "", origin: str | None = None) -> Write | Outcome:
        """``origin``: who made the change (the record's ``ttsync.origin``); the importer's changes came from QBO
        and are not sent back (an echo), only recorded."""
        prepare_type = self._by_type.get(event.aggregate_type)
        if prepare_type is None:
            raise MalformedEvent(f"no QBO mapping for aggregate type {event.aggregate_type!r}",
                                 code="unknown_aggregate_type")
        self.resolver.new_event()
        processed, mapped = self.store.lookup(event.event_id, event.aggregate_type, event.aggregate_id)
        if processed:
            return Outcome(Result.DUPLICATE, reason="event already processed")
        if origin == ORIGIN_QBO_IMPORT:
            return Outcome(Result.SKIPPED, mapped.qbo_id if mapped else None,
                           "made by the importer from a QBO change: sending it back would echo")
        decision = self._decide(event, mapped)
        if decision.action is Action.SKIP and mapped is not None and mapped.pending_requestid and not mapped.in_qbo \
                and mapped.last_version < event.aggregate_version:
            # An earlier version's create is pending: it may have reached QBO with its answer lost, and that
            # version may still be on its way back from a retry topic (where it will then be skipped as older).
            # Settle what QBO holds before a cancel or delete is skipped as "never synced".
            mapped = self._resolve_pending(event, mapped)
            decision = self._decide(event, mapped)
        if decision.action is Action.SKIP:
            return Outcome(Result.SKIPPED, mapped.qbo_id if mapped else None, decision.reason)
        state = readable_state(event.aggregate_type, event.payload, self.options)
        return prepare_type(Delivery(event, generation, decision, mapped), state)

    def _decide(self, event: EventEnvelope, mapped: Mapped | None) -> Decision:
        """``lifecycle.decide``, except that a version waiting for an earlier one this group dead-lettered follows
        it to the dead-letter topic at once: that one comes back only when an operator replays it."""
        try:
            return decide(event, mapped, self.policy)
        except DependencyNotReady as exc:
            if exc.code != EARLIER_VERSION_PENDING:
                raise
            known = mapped.last_version if mapped is not None else 0
            dead = self.store.dead_lettered_between(event.aggregate_type, event.aggregate_id, known + 1,
                                                    event.aggregate_version - 1)
            if not dead:
                raise
            version, reason = dead[0]
            raise EarlierVersionDeadLettered(
                f"{event.aggregate_type} {event.aggregate_id} version {event.aggregate_version} is not in QBO and "
                f"whether it ever should be depends on version {version}, which was dead-lettered ({reason[:300]}): "
                "replay that one, then this one") from exc

    # -- per aggregate type ----------------------------------------------------------------------------

    def _invoice(self, d: Delivery, inv: InvoiceState) -> Write:
        if d.decision.action in (Action.VOID, Action.DELETE):
            # QBO voids no invoice with payments applied: the settlement goes first, payments may be on their way
            operation = Operation.VOID if d.decision.action is Action.VOID else Operation.DELETE
            return d.removal("Invoice", operation, void_settlement_first=True, payments_may_block=True)
        customer = self.resolver.customer(inv.client_id, inv.client, inv.client_name, inv.client_email,
                                          currency=inv.currency_code)
        body = invoice_request(inv, InvoiceRefs(customer, self.resolver.item()), self.options)
        if gap := stale_subtotal_gap(inv):
            log.warning("invoice_subtotal_stale", invoice_id=inv.id, invoice_number=inv.invoice_number,
                        subtotal=str(inv.subtotal), difference=str(gap),
                        action="an adjustment line keeps QBO at TimeTracker's total; recalculate it in TimeTracker")
        lookup = NaturalKey("Invoice", select_where("Invoice", DocNumber=body["DocNumber"]),
                            marker("invoice", inv.id, self.options.source), or_customer=customer)

        def legacy() -> dict[str, Any] | None:
            # TimeTracker's connector sent no DocNumber and no tax: same customer, date and one of the totals.
            rows = self.legacy_pool.candidates("Invoice", body["TxnDate"], _owner(d.event), CustomerRef=customer)
            return self._legacy_taken(d.event, "Invoice", _legacy_pick(
                d.event, "Invoice", *legacy_match(rows, {inv.subtotal, inv.total_amount}, lone=True)))

        # A "mark as paid" without payment rows is held by a settlement Payment, written after the invoice; when
        # there is none (any more), a settlement left from before is voided first: it may hold the total down.
        settles = inv.unrecorded_payment > 0
        return self._upsert(d, "Invoice", body, lookup, legacy, customer_ref=customer, payments_may_block=True,
                            settle=inv if settles else None, void_settlement_first=not settles)

    def _expense(self, d: Delivery, exp: ExpenseState) -> Write:
        if d.decision.action in (Action.VOID, Action.DELETE):
            return d.removal("Purchase", Operation.DELETE)  # QBO cannot void a Purchase
        refs = PurchaseRefs(
            paying_account_id=self.resolver.paying_account(payment_type(exp, self.options), exp.payment_method),
            expense_account_id=self.resolver.expense_account(exp.category),
            vendor_id=self.resolver.vendor(exp.vendor),
        )
        body = purchase_request(exp, refs, self.options)
        lookup = NaturalKey("Purchase", select_where("Purchase", DocNumber=expense_doc_number(exp.id)),
                            marker("expense", exp.id, self.options.source))

        def legacy() -> dict[str, Any] | None:
            rows = self.legacy_pool.candidates("Purchase", body["TxnDate"], _owner(d.event))
            return self._legacy_taken(d.event, "Purchase", _legacy_pick(
                d.event, "Purchase", *legacy_match(rows, {exp.amount, exp.amount + (exp.tax_amount or 0)})))

        return self._upsert(d, "Purchase", body, lookup, legacy)

    def _payment(self, d: Delivery, pay: PaymentState) -> Write:
        if d.decision.action in (Action.VOID, Action.DELETE):
            operation = Operation.VOID if d.decision.action is Action.VOID else Operation.DELETE
            return d.removal("Payment", operation)
        invoice = self.store.mapped("invoice", str(pay.invoice_id))
        if invoice is None or not invoice.in_qbo:
            raise DependencyNotReady(f"payment {pay.id}: invoice {pay.invoice_id} is not in QBO yet")
        customer = invoice.customer_ref or str(self.qbo.read("Invoice", invoice.qbo_id or "")["CustomerRef"]["value"])
        body = payment_request(pay, PaymentRefs(customer, invoice.qbo_id or "", self.resolver.deposit_account()),
                               self.options)
        lookup = NaturalKey("Payment", select_where("Payment", CustomerRef=customer, TxnDate=body["TxnDate"]),
                            marker("payment", pay.id, self.options.source))
        # The invoice and its payment are separate aggregates on separate partitions: the payment may arrive
        # before the invoice's newer, larger total did (payments_may_block).
        return self._upsert(d, "Payment", body, lookup, None, payments_may_block=True)

    def _client(self, d: Delivery, client: ClientState) -> Write:
        if d.decision.action is Action.DEACTIVATE:
            return d.removal("Customer", Operation.DEACTIVATE, body={"Active": False})
        currency = (client.invoice_currency or self.options.default_currency) \
            if d.decision.action is Action.CREATE else None
        body = customer_request(client, self.options, currency=currency)
        lookup = NaturalKey("Customer", select_where("Customer", DisplayName=body["DisplayName"]))
        if d.decision.action is Action.CREATE and not (d.mapped and d.mapped.pending_requestid):
            # A name taken in QBO (the old connector's customer, or one made by hand) would refuse the create
            # (6240), which then adopts it alone; known from a backlog's bulk read, it is adopted in the batch.
            taken = self.resolver.customer_named(body["DisplayName"], query=False)
            if taken is not None:
                return d.write(Operation.ADOPT, "Customer", body=body, qbo_id=str(taken["Id"]),
                               sync_token=str(taken["SyncToken"]), lookup=lookup)
        return self._upsert(d, "Customer", body, lookup, None)

    # -- a backlog ---------------------------------------------------------------------------------------

    def prefetch(self, events: list[EventEnvelope]) -> None:
        """Before a backlog's events are prepared: read together the QBO customers they will look for by name
        (the clients', and those of invoices whose client is not mapped yet)."""
        wanted: list[tuple[str, str]] = []  # (client id, the name its customer has or would have)
        for event in events:
            if event.aggregate_type not in ("client", "invoice"):
                continue
            try:
                s = readable_state(event.aggregate_type, event.payload, self.options)
            except ValueError:  # pydantic's ValidationError: prepare() dead-letters it, with the reason
                continue
            if isinstance(s, ClientState):
                wanted.append((str(s.id), s.name))
            elif isinstance(s, InvoiceState):
                wanted.append((str(s.client_id), s.client.name if s.client else s.client_name))
        if wanted:
            unmapped = self.store.unmapped("client", {client_id for client_id, _ in wanted})
            self.resolver.prefetch_customers([name for client_id, name in wanted if client_id in unmapped])

    def forget_prefetched(self) -> None:
        self.resolver.forget_customers()

    # -- creates and updates ---------------------------------------------------------------------------

    def _upsert(self, d: Delivery, entity: str, body: dict[str, Any], lookup: NaturalKey,
                legacy: Callable[[], dict[str, Any] | None] | None, **fields: Any) -> Write:
        mapped = d.mapped
        if d.decision.action is Action.UPDATE and mapped is not None and mapped.qbo_id:
            return d.write(Operation.UPDATE, entity, body=body, qbo_id=mapped.qbo_id, sync_token=mapped.sync_token,
                           lookup=lookup, **fields)
        pending = mapped is not None and mapped.pending_requestid is not None
        # A create. Did an earlier attempt write it already (a crash after the write, a lost answer)? Else, taking
        # over from TimeTracker's own connector: what it already created is adopted, not doubled.
        existing = None
        if pending:
            existing = find_by_key(self.qbo, lookup)
        elif d.decision.action is Action.CREATE:
            existing = self._legacy_entity(d.event, entity, legacy, body.get("TxnDate"))
        if existing is not None:
            return d.write(Operation.ADOPT, entity, body=body, qbo_id=str(existing["Id"]),
                           sync_token=str(existing["SyncToken"]), lookup=lookup, **fields)
        return d.write(Operation.CREATE, entity, body=body, lookup=lookup, retry_of_pending=pending, **fields)

    def _resolve_pending(self, event: EventEnvelope, mapped: Mapped) -> Mapped:
        """What the entity map should say of an aggregate whose create is pending: the entity found in QBO by its
        marker (adopted), or nothing (the pending mark is cleared)."""
        key = self._pending_key(event)
        found = find_by_key(self.qbo, key)
        if found is not None:
            log.info("pending_create_found", entity=mapped.qbo_entity, qbo_id=found["Id"],
                     aggregate_id=event.aggregate_id, version=event.aggregate_version)
            self.store.adopt(event.aggregate_type, event.aggregate_id, found, version=mapped.last_version,
                             customer_ref=mapped.customer_ref)
        else:
            self.store.clear_pending(event.aggregate_type, event.aggregate_id)
        return self.store.mapped(event.aggregate_type, event.aggregate_id) or mapped

    def _pending_key(self, event: EventEnvelope) -> NaturalKey:
        """The natural key of an aggregate from its payload alone (no reference resolved), marker required."""
        p = readable_state(event.aggregate_type, event.payload, self.options)
        mark = marker(event.aggregate_type, event.aggregate_id, self.options.source)
        if isinstance(p, InvoiceState):
            return NaturalKey("Invoice", select_where("Invoice", DocNumber=p.invoice_number), mark, skip_voided=True)
        if isinstance(p, ExpenseState):
            return NaturalKey("Purchase", select_where("Purchase", DocNumber=expense_doc_number(p.id)), mark,
                              skip_voided=True)
        if isinstance(p, PaymentState):
            return NaturalKey("Payment", select_where("Payment", TxnDate=p.payment_date.isoformat()), mark,
                              skip_voided=True)
        name = customer_request(p, self.options)["DisplayName"]
        return NaturalKey("Customer", select_in("Customer", "DisplayName", [name, f"{name} (customer)"]), mark,
                          note_field="Notes", skip_voided=True)

    def _legacy_taken(self, event: EventEnvelope, entity: str, found: dict[str, Any] | None
                      ) -> dict[str, Any] | None:
        if found is not None:
            self.legacy_pool.claim(entity, found, _owner(event))
        return found

    def _legacy_entity(self, event: EventEnvelope, entity: str, legacy: Callable[[], dict[str, Any] | None] | None,
                       txn_date: str | None = None) -> dict[str, Any] | None:
        """The QBO entity TimeTracker's old connector made for this record: by the id it stored in
        ``integration_metadata``, else (for a snapshot of a record that existed before ttsync) by a unique
        match on customer, date and amount. That query runs for a snapshot, and for the first change of a record
        created long before it (``LEGACY_AGE``), which the snapshot may not have reached yet; a record born
        under ttsync costs no extra QBO call."""
        qbo_id = legacy_qbo_id(event.aggregate_type, event.payload)
        if qbo_id is not None and legacy is not None and txn_date:
            # Usually among the candidates of its date, read in bulk anyway: no read of its own.
            pooled = self.legacy_pool.by_id(entity, txn_date, qbo_id, _owner(event))
            if pooled is not None:
                return self._legacy_taken(event, entity, pooled)
        found = read_if_present(self.qbo, entity, qbo_id) if qbo_id is not None else None
        if qbo_id is not None and found is None:  # gone or never there: create it anew
            log.info("legacy_id_not_in_qbo", entity=entity, qbo_id=qbo_id, aggregate_id=event.aggregate_id)
        elif found is not None:
            owner = MARKER_RE.search(found.get("PrivateNote") or "")
            if owner is None or (owner.group(1), owner.group(2)) == (event.aggregate_type, event.aggregate_id):
                return found
            log.warning("legacy_id_owned_by_another_record", entity=entity, qbo_id=qbo_id,
                        aggregate_id=event.aggregate_id, owner=owner.group(0))
        if legacy is not None and self.adopt_legacy and (event.action == "snapshot" or _predates_ttsync(event)):
            return legacy()
        return None


def _owner(event: EventEnvelope) -> str:
    return f"{event.aggregate_type}:{event.aggregate_id}"


def _legacy_pick(event: EventEnvelope, entity: str, found: dict[str, Any] | None,
                 ambiguous: list[str]) -> dict[str, Any] | None:
    if ambiguous:
        # ttsync creates its own; the old one stays in QBO unmarked, where reconcile cannot tie it to a record.
        log.warning("legacy_match_ambiguous", entity=entity, aggregate_id=event.aggregate_id,
                    candidates=ambiguous, action="creating; check these QBO entities for a twin")
    return found


def _predates_ttsync(event: EventEnvelope) -> bool:
    created = event.payload.get("created_at")
    try:
        born = dt.datetime.fromisoformat(str(created))
    except ValueError:
        return False
    born = born if born.tzinfo else born.replace(tzinfo=dt.UTC)
    occurred = event.occurred_at if event.occurred_at.tzinfo else event.occurred_at.replace(tzinfo=dt.UTC)
    return occurred - born > LEGACY_AGE
