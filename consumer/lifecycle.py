"""Which QBO operation a TimeTracker change calls for: a pure function of the event, what is already in
QBO for its aggregate, and the sync policy (TimeTracker's statuses, timetracker-model.md §2)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from consumer.errors import DependencyNotReady, MalformedEvent
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


# The code of the DependencyNotReady ``decide`` raises for a version that overtook an earlier one it depends on.
EARLIER_VERSION_PENDING = "earlier_version_pending"


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
    place = placement(event.aggregate_type, event.payload, policy)
    if place is Placement.UNLESS_UNISSUED and not in_qbo:
        if event.aggregate_version > known + 1:
            # Whether it was ever issued is history, and part of it has not been seen: an earlier version (created
            # as sent, say) failed and waits in a retry topic while this one overtook it. Skipped now, this version
            # would be recorded and the earlier one then skipped as older: a sent invoice never reaching QBO (seen
            # in the chaos suite under QBO 5xx). Wait for it, as for any dependency; once it is settled the gap
            # closes. A gap that cannot close (an earlier version dead-lettered) sends this one to the dead-letter
            # topic after it (consumer.prepare), where replaying both in order is right.
            raise DependencyNotReady(f"{event.aggregate_type} {event.aggregate_id} version {event.aggregate_version} "
                                     f"is {status} and not in QBO, and version {known + 1} has not been settled yet: "
                                     "whether it was ever issued depends on it", code=EARLIER_VERSION_PENDING)
        return Decision(Action.SKIP, f"status {status} without ever being issued, sent or paid: TimeTracker's "
                        "daily job marks unsent drafts overdue too; it enters QBO once it is sent or paid")
    if place in (Placement.PRESENT, Placement.UNLESS_UNISSUED):
        return Decision(Action.SKIP, "voided in QBO, which is final") if voided else upsert
    if place is Placement.VOIDED:
        return Decision(Action.VOID, status or "void") if in_qbo and not voided else \
            Decision(Action.SKIP, f"{status} and not in QBO")
    if place is Placement.REMOVED:
        return Decision(Action.DELETE, status) if in_qbo else Decision(Action.SKIP, f"{status}, not in QBO")
    if place is Placement.INACTIVE:
        return Decision(Action.DEACTIVATE, "archived") if in_qbo else Decision(Action.SKIP, "inactive")
    if place is Placement.OFF:
        return Decision(Action.SKIP, f"{event.aggregate_type} sync is off")
    return Decision(Action.SKIP, f"status {status or '?'} stays local")


class Placement(enum.Enum):
    """Where the sync policy puts a record of a given status, whatever QBO holds now: the one reading of the
    policy, for ``decide`` (what to do about one event) and reconcile (what QBO should hold)."""

    PRESENT = "present"  # in QBO, active
    UNLESS_UNISSUED = "unless_unissued"  # in QBO once it was ever issued (a draft the daily job made overdue)
    VOIDED = "voided"  # in QBO as void, if it ever got there
    REMOVED = "removed"  # out of QBO: deleted if it got there (a rejected expense)
    INACTIVE = "inactive"  # an archived client: inactive in QBO, if it got there
    LOCAL = "local"  # stays in TimeTracker (a draft): never sent
    OFF = "off"  # this type is not synced at all


def placement(aggregate_type: str, payload: dict[str, Any], policy: SyncPolicy) -> Placement:
    status = str(payload.get("status", "")).lower()
    if aggregate_type == "invoice":
        if status in policy.invoice_sync:
            unissued = status in policy.invoice_sync_if_issued and not was_issued(payload)
            return Placement.UNLESS_UNISSUED if unissued else Placement.PRESENT
        return Placement.VOIDED if status in policy.invoice_void else Placement.LOCAL
    if aggregate_type == "expense":
        if status in policy.expense_sync:
            return Placement.PRESENT
        return Placement.REMOVED if status in policy.expense_delete else Placement.LOCAL
    if aggregate_type == "payment":
        if status in policy.payment_sync:
            return Placement.PRESENT
        return Placement.VOIDED if status in policy.payment_void else Placement.LOCAL
    if aggregate_type == "client":
        if not policy.sync_clients:
            return Placement.OFF
        return Placement.INACTIVE if status == "inactive" else Placement.PRESENT
    return Placement.OFF

