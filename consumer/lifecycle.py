"""Which QBO operation a TimeTracker change calls for: a pure function of the event, what is already in
QBO for its aggregate, and the sync policy (TimeTracker's statuses, timetracker-model.md §2)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from consumer.errors import MalformedEvent
from schemas.events import EventEnvelope


class Action(enum.Enum):
    CREATE = "create"
    UPDATE = "update"
    VOID = "void"
    DELETE = "delete"
    DEACTIVATE = "deactivate"
    SKIP = "skip"


@dataclass(frozen=True)
class Mapped:
    """What the entity map knows of an aggregate. ``qbo_id`` is None when it was seen but never sent."""

    qbo_entity: str
    qbo_id: str | None
    sync_token: str | None
    last_version: int
    qbo_status: str = "active"  # active | voided | deleted | inactive
    customer_ref: str | None = None
    pending_requestid: str | None = None

    @property
    def in_qbo(self) -> bool:
        return self.qbo_id is not None and self.qbo_status != "deleted"


@dataclass(frozen=True)
class SyncPolicy:
    """TimeTracker's defaults: invoices once issued or sent (drafts stay local), cancelled -> void; expenses
    once approved, rejected -> delete; payments once completed, refunded/failed -> void."""

    invoice_sync: frozenset[str] = field(default_factory=lambda: frozenset({"issued", "sent", "paid", "overdue"}))
    invoice_void: frozenset[str] = field(default_factory=lambda: frozenset({"cancelled", "void"}))
    # TimeTracker's daily job (check_overdue_invoices) sets 'overdue' on drafts as well as on sent invoices:
    # an invoice in these statuses enters QBO only with a sign that it left the house (see ``was_issued``).
    invoice_sync_if_issued: frozenset[str] = field(default_factory=lambda: frozenset({"overdue"}))
    expense_sync: frozenset[str] = field(default_factory=lambda: frozenset({"approved", "reimbursed"}))
    expense_delete: frozenset[str] = field(default_factory=lambda: frozenset({"rejected"}))
    payment_sync: frozenset[str] = field(default_factory=lambda: frozenset({"completed"}))
    payment_void: frozenset[str] = field(default_factory=lambda: frozenset({"refunded", "failed"}))
    sync_clients: bool = True
    max_version_jump: int = 1_000_000
    """An event this many versions ahead of what the entity map knows is not believed (0 = no limit)."""


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""


QBO_ENTITY = {"invoice": "Invoice", "expense": "Purchase", "payment": "Payment", "client": "Customer"}


def was_issued(payload: dict[str, Any]) -> bool:
    """Whether an invoice that is not in QBO shows it was ever issued: money received against it, an e-mail
    that sent it, or an id TimeTracker's old QuickBooks connector (which synced sent invoices only) left."""
    try:
        paid = Decimal(str(payload.get("amount_paid") or "0"))
    except ArithmeticError:
        paid = Decimal("0")
    meta = payload.get("integration_metadata")
    legacy = isinstance(meta, dict) and bool(meta.get("quickbooks") or meta.get("quickbooks_id"))
    return paid > 0 or int(payload.get("emails_sent") or 0) > 0 or legacy


def decide(event: EventEnvelope, mapped: Mapped | None, policy: SyncPolicy) -> Decision:
    known = mapped.last_version if mapped is not None else 0
    if policy.max_version_jump and event.aggregate_version - known > policy.max_version_jump:
        # Applied, it would make every later real change of the aggregate look older and be skipped for good:
        # a forged or corrupted record must be dead-lettered, not believed.
        raise MalformedEvent(f"version {event.aggregate_version} of {event.aggregate_type} {event.aggregate_id} "
                             f"is {event.aggregate_version - known} ahead of the last one known ({known}); more "
                             f"than {policy.max_version_jump} is not plausible", code="implausible_version")
    if mapped is not None and mapped.last_version >= event.aggregate_version:
        return Decision(Action.SKIP, f"version {event.aggregate_version} is not newer than {mapped.last_version}")
    in_qbo = mapped is not None and mapped.in_qbo
    if event.action == "deleted":
        if not in_qbo:
            return Decision(Action.SKIP, "deleted before it was ever synced")
        return Decision(Action.DEACTIVATE if event.aggregate_type == "client" else Action.DELETE, "deleted")
    status = str(event.payload.get("status", "")).lower()
    upsert = Decision(Action.UPDATE if in_qbo else Action.CREATE, f"status {status}")
    voided = mapped is not None and mapped.qbo_status == "voided"
    if event.aggregate_type == "invoice":
        if status in policy.invoice_sync and status in policy.invoice_sync_if_issued and not in_qbo \
                and not was_issued(event.payload):
            return Decision(Action.SKIP, f"status {status} without ever being issued, sent or paid: TimeTracker's "
                            "daily job marks unsent drafts overdue too; it enters QBO once it is sent or paid")
        if status in policy.invoice_sync:
            return Decision(Action.SKIP, "voided in QBO, which is final") if voided else upsert
        if status in policy.invoice_void:
            return Decision(Action.VOID, "cancelled") if in_qbo and not voided else \
                Decision(Action.SKIP, "cancelled and not in QBO")
        return Decision(Action.SKIP, f"status {status or '?'} stays local")
    if event.aggregate_type == "expense":
        if status in policy.expense_sync:
            return upsert
        if status in policy.expense_delete:
            return Decision(Action.DELETE, "rejected") if in_qbo else Decision(Action.SKIP, "rejected, not in QBO")
        return Decision(Action.SKIP, f"status {status or '?'} stays local")
    if event.aggregate_type == "payment":
        if status in policy.payment_sync:
            return Decision(Action.SKIP, "voided in QBO, which is final") if voided else upsert
        if status in policy.payment_void:
            return Decision(Action.VOID, status) if in_qbo and not voided else \
                Decision(Action.SKIP, f"{status} and not in QBO")
        return Decision(Action.SKIP, f"status {status or '?'} stays local")
    if event.aggregate_type == "client":
        if not policy.sync_clients:
            return Decision(Action.SKIP, "client sync is off")
        if status == "inactive":
            return Decision(Action.DEACTIVATE, "archived") if in_qbo else Decision(Action.SKIP, "inactive")
        return upsert
    return Decision(Action.SKIP, f"unknown aggregate type {event.aggregate_type}")
