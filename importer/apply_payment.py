"""Where a QBO Payment becomes TimeTracker rows (the import direction), exactly once in effect.

1. The payment is read from QBO (a notification is only a hint): deleted or voided, every invoice it paid gets 0.
2. ttsync's own payments (exported from TimeTracker, or a settlement) are echoes: skipped. A payment this
   importer made rows for is found by its links; a SyncToken not newer than the one applied is a duplicate.
3. Per invoice it pays, in one TimeTracker transaction marked as the importer's (capture tags it, the export
   consumer does not send it back): a ``payments`` row created, changed or deleted, and the invoice's
   ``amount_paid``, ``payment_status`` and ``status`` as TimeTracker's own payment routes set them; the links
   record what was applied, in the same transaction.
4. The entity map learns which QBO payment a new TimeTracker payment is, so an edit made later in TimeTracker
   updates that QBO payment instead of creating another.
An invoice ttsync never synced is a ``MissingMapping``: dead-lettered with the reason."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

import structlog
from sqlalchemy import Connection, Engine, Table, delete, insert, select, update

from consumer.crash_points import CrashHook, no_crash
from consumer.errors import MissingMapping
from consumer.qbo_port import QboPort, read_if_present
from consumer.state_store import StateStore
from consumer.writes import Outcome, Result
from importer.metrics import CONFLICTS
from importer.notifications import Change
from importer.payment_effects import PaymentChange, amounts_by_invoice, invoice_after, payment_method
from importer.transactions import marked_as_import
from producer.outbox_tables import import_links
from producer.timetracker_schema import Invoice, Payment

log = structlog.get_logger("ttsync.import")

invoices, payments = cast(Table, Invoice.__table__), cast(Table, Payment.__table__)


@dataclass(frozen=True)
class Link:
    qbo_invoice_id: str
    tt_invoice_id: int
    tt_payment_id: int | None
    amount: Decimal
    sync_token: int


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class PaymentImporter:
    def __init__(self, qbo: QboPort, timetracker: Engine, store: StateStore, realm_id: str, *,
                 crash: CrashHook = no_crash) -> None:
        self.crash = crash
        self.qbo = qbo
        self.timetracker = timetracker
        self.store = store
        self.realm_id = realm_id

    def apply(self, change: Change) -> Outcome:
        payment = None if change.operation == "Delete" else read_if_present(self.qbo, "Payment", change.entity_id)
        links = self._links(change.entity_id)
        if not links and self.store.owner_of(change.entity_id, ("payment", "settlement")) is not None:
            return Outcome(Result.SKIPPED, change.entity_id, "ttsync's own payment (an echo of the export)")
        token = int(payment["SyncToken"]) if payment is not None else None
        if links and token is not None and token <= min(link.sync_token for link in links.values()):
            self._remember(change.entity_id, payment, links)  # a crash after the commit may have skipped it
            return Outcome(Result.DUPLICATE, change.entity_id, f"SyncToken {token} applied already")
        wanted = amounts_by_invoice(payment)
        if not links and not any(wanted.values()):
            return Outcome(Result.SKIPPED, change.entity_id, "pays no invoice ttsync knows (or nothing at all)")
        targets = {qid: self._tt_invoice(change.entity_id, qid, links) for qid in {*wanted, *links}}
        with self.timetracker.begin() as conn:
            marked_as_import(conn)
            results = [self._apply_to_invoice(conn, change.entity_id, payment, qid, targets[qid],
                                              wanted.get(qid, Decimal("0")), links.get(qid), token)
                       for qid in sorted(targets)]
        self.crash("after_timetracker_commit")
        self._remember(change.entity_id, payment, self._links(change.entity_id))
        if all(r == "unchanged" for r in results):  # a deletion delivered again, a change of nothing we hold
            return Outcome(Result.DUPLICATE, change.entity_id, "TimeTracker holds this already")
        result = Result.CREATED if "create" in results else Result.UPDATED if "edit" in results else Result.DELETED
        log.info("qbo_payment_imported", qbo_id=change.entity_id, invoices=sorted(targets), changes=results)
        return Outcome(result, change.entity_id)

    # -- reading ------------------------------------------------------------------------------------

    def _links(self, qbo_id: str) -> dict[str, Link]:
        with self.timetracker.connect() as conn:
            rows = conn.execute(select(import_links).where(
                import_links.c.realm_id == self.realm_id, import_links.c.qbo_entity == "Payment",
                import_links.c.qbo_id == qbo_id)).all()
        return {r.qbo_invoice_id: Link(r.qbo_invoice_id, int(r.tt_invoice_id), r.tt_payment_id, Decimal(r.amount),
                                       int(r.sync_token)) for r in rows}

    def _tt_invoice(self, qbo_payment_id: str, qbo_invoice_id: str, links: dict[str, Link]) -> int:
        if qbo_invoice_id in links:
            return links[qbo_invoice_id].tt_invoice_id
        owner = self.store.owner_of(qbo_invoice_id, ("invoice",))
        if owner is None:
            raise MissingMapping(f"QBO payment {qbo_payment_id} pays QBO invoice {qbo_invoice_id}, which is not a "
                                 "TimeTracker invoice ttsync synced: record the payment in TimeTracker by hand",
                                 code="unknown_invoice")
        return int(owner)

    # -- writing ------------------------------------------------------------------------------------

    def _apply_to_invoice(self, conn: Connection, qbo_id: str, payment: dict[str, Any] | None, qbo_invoice_id: str,
                          tt_invoice_id: int, amount: Decimal, link: Link | None, token: int | None) -> str:
        """One invoice's share of the payment; returns what happened to its TimeTracker payment row."""
        payment_id = link.tt_payment_id if link is not None else None
        had = Decimal("0")
        if payment_id is not None:
            row = conn.execute(select(payments.c.amount).where(payments.c.id == payment_id)).scalar()
            had = Decimal(row) if row is not None else Decimal("0")
            if row is None:  # deleted in TimeTracker meanwhile: QBO owns payments, it comes back
                payment_id = None
            if link is not None and had != link.amount:
                # Both sides changed it since the last sync: QBO owns payments (README, the import direction).
                CONFLICTS.labels("Payment", "qbo").inc()
                log.warning("payment_conflict", qbo_id=qbo_id, payment_id=link.tt_payment_id,
                            timetracker=str(had), qbo=str(amount), winner="qbo")
        change: PaymentChange | None = None
        if amount > 0 and payment_id is None:
            payment_id, change = self._insert_payment(conn, tt_invoice_id, amount, payment or {}), "create"
        elif amount == 0 and payment_id is not None:
            conn.execute(delete(payments).where(payments.c.id == payment_id))
            payment_id, change = None, "delete"
        elif amount != had and payment_id is not None:
            conn.execute(update(payments).where(payments.c.id == payment_id).values(
                amount=amount, net_amount=amount, updated_at=_now().replace(tzinfo=None)))
            change = "edit"
        if change is not None:
            self._update_invoice(conn, tt_invoice_id, amount - had, change)
        values = {"tt_payment_id": payment_id, "tt_invoice_id": tt_invoice_id, "amount": str(amount),
                  "sync_token": token if token is not None else (link.sync_token + 1 if link else 0),
                  "updated_at": _now()}
        if link is None:
            conn.execute(insert(import_links).values(realm_id=self.realm_id, qbo_entity="Payment", qbo_id=qbo_id,
                                                     qbo_invoice_id=qbo_invoice_id, **values))
        else:
            conn.execute(update(import_links).where(
                import_links.c.realm_id == self.realm_id, import_links.c.qbo_entity == "Payment",
                import_links.c.qbo_id == qbo_id, import_links.c.qbo_invoice_id == qbo_invoice_id).values(**values))
        return change or "unchanged"

    def _insert_payment(self, conn: Connection, tt_invoice_id: int, amount: Decimal, payment: dict[str, Any]) -> int:
        currency = conn.execute(select(invoices.c.currency_code).where(invoices.c.id == tt_invoice_id)).scalar()
        now = _now().replace(tzinfo=None)  # TimeTracker keeps naive UTC timestamps
        reference = str(payment.get("PaymentRefNum") or f"QBO payment {payment.get('Id')}")[:100]
        inserted = conn.execute(insert(payments).values(
            invoice_id=tt_invoice_id, amount=amount, currency=currency,
            payment_date=dt.date.fromisoformat(str(payment.get("TxnDate") or now.date().isoformat())),
            method=payment_method(payment), reference=reference, notes="Recorded in QuickBooks Online",
            status="completed", net_amount=amount, created_at=now, updated_at=now).returning(payments.c.id))
        return int(inserted.scalar_one())

    def _update_invoice(self, conn: Connection, tt_invoice_id: int, delta: Decimal, change: PaymentChange) -> None:
        query = select(invoices.c.amount_paid, invoices.c.total_amount, invoices.c.status).where(
            invoices.c.id == tt_invoice_id)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()  # two payments of one invoice, on two partitions
        row = conn.execute(query).one()
        after = invoice_after(Decimal(row.amount_paid or 0), Decimal(row.total_amount), str(row.status), delta,
                              change)
        conn.execute(update(invoices).where(invoices.c.id == tt_invoice_id).values(
            amount_paid=after.amount_paid, payment_status=after.payment_status, status=after.status,
            updated_at=_now().replace(tzinfo=None)))

    def _remember(self, qbo_id: str, payment: dict[str, Any] | None, links: dict[str, Link]) -> None:
        """The entity map ties each TimeTracker payment made from this QBO payment to it (idempotent)."""
        for link in links.values():
            if link.tt_payment_id is not None and payment is not None:
                self.store.adopt("payment", str(link.tt_payment_id), {"Id": qbo_id, "SyncToken": payment["SyncToken"]})

