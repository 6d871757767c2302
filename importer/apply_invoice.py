"""Where a QBO Invoice change reaches TimeTracker. TimeTracker owns invoice content (lines, amounts, dates): a QBO
edit of them is not imported. What QBO alone can say is that an invoice ttsync synced was voided or deleted there:
the TimeTracker invoice is then cancelled (``TTSYNC_IMPORT_INVOICE_VOID=cancel``) or left as it is and flagged in
the log and ``/metrics`` (``flag``). ttsync's own voids (an invoice cancelled in TimeTracker) are echoes: skipped."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, cast

import structlog
from sqlalchemy import Engine, Table, select, update

from consumer.qbo_port import QboPort, read_if_present
from consumer.state_store import StateStore
from consumer.writes import Outcome, Result
from importer.metrics import CONFLICTS
from importer.notifications import Change
from importer.transactions import marked_as_import
from producer.timetracker_schema import Invoice

log = structlog.get_logger("ttsync.import")

invoices = cast(Table, Invoice.__table__)
InvoiceVoidPolicy = Literal["cancel", "flag"]


def voided(invoice: dict[str, Any] | None) -> bool:
    """Gone or voided in QBO: deleted (None), or voided (QBO keeps it with zero amounts and a "Voided" memo)."""
    if invoice is None:
        return True
    return bool(invoice.get("Voided")) or (str(invoice.get("PrivateNote") or "").startswith("Voided")
                                           and not invoice.get("TotalAmt"))


class InvoiceImporter:
    def __init__(self, qbo: QboPort, timetracker: Engine, store: StateStore, *,
                 on_void: InvoiceVoidPolicy = "cancel") -> None:
        self.qbo = qbo
        self.timetracker = timetracker
        self.store = store
        self.on_void = on_void

    def apply(self, change: Change) -> Outcome:
        tt_id = self.store.owner_of(change.entity_id, ("invoice",))
        if tt_id is None:
            return Outcome(Result.SKIPPED, change.entity_id, "not an invoice ttsync synced (made in QBO)")
        mapped = self.store.mapped("invoice", tt_id)
        if mapped is not None and mapped.qbo_status in ("voided", "deleted"):
            return Outcome(Result.SKIPPED, change.entity_id, "voided by ttsync (an echo of the export)")
        invoice = None if change.operation == "Delete" else read_if_present(self.qbo, "Invoice", change.entity_id)
        if not voided(invoice):
            return Outcome(Result.SKIPPED, change.entity_id, "TimeTracker owns invoice content (balance and edits "
                                                             "in QBO are not imported)")
        status = "deleted" if invoice is None else "voided"
        if self.on_void == "flag":
            CONFLICTS.labels("Invoice", "timetracker").inc()
            log.warning("qbo_invoice_voided_flagged", qbo_id=change.entity_id, invoice_id=tt_id, qbo=status,
                        action="left as it is in TimeTracker (TTSYNC_IMPORT_INVOICE_VOID=flag): cancel it there, "
                               "or send it again")
            return Outcome(Result.SKIPPED, change.entity_id, f"{status} in QBO: flagged, TimeTracker left as it is")
        with self.timetracker.begin() as conn:
            marked_as_import(conn)
            current = conn.execute(select(invoices.c.status).where(invoices.c.id == int(tt_id))).scalar()
            if current is not None and current != "cancelled":
                conn.execute(update(invoices).where(invoices.c.id == int(tt_id)).values(
                    status="cancelled", updated_at=dt.datetime.now(dt.UTC).replace(tzinfo=None)))
        self.store.mark_status("invoice", tt_id, status)
        log.info("qbo_invoice_void_imported", qbo_id=change.entity_id, invoice_id=tt_id, qbo=status)
        return Outcome(Result.VOIDED, change.entity_id)

