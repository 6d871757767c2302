"""Where a QBO Customer change reaches TimeTracker: the contact fields QBO is allowed to own
(``TTSYNC_IMPORT_CLIENT_FIELDS``: email, phone, address) are copied to the client ttsync synced; the name stays
TimeTracker's. A customer made in QBO becomes a new client only with ``TTSYNC_IMPORT_NEW_CUSTOMERS``. A field is
written only when it differs: ttsync's own customer writes come back equal and change nothing (no echo, no loop).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, cast

import structlog
from sqlalchemy import Engine, Table, insert, select, update

from consumer.mapping import MappingOptions, customer_request
from consumer.qbo_port import QboPort, read_if_present
from consumer.state_store import StateStore
from consumer.writes import Outcome, Result
from importer.notifications import Change
from importer.transactions import marked_as_import
from producer.timetracker_schema import Client
from schemas.events import ClientState

log = structlog.get_logger("ttsync.import")

clients = cast(Table, Client.__table__)
ClientField = Literal["email", "phone", "address"]
CLIENT_FIELDS: tuple[ClientField, ...] = ("email", "phone", "address")


def client_fields(customer: dict[str, Any]) -> dict[str, str | None]:
    """The TimeTracker client fields a QBO customer holds (mapping.customer_request, read back)."""
    addr = customer.get("BillAddr") or {}
    lines = [str(addr[k]).strip() for k in ("Line1", "Line2", "Line3", "Line4", "Line5") if addr.get(k)]
    return {"email": (customer.get("PrimaryEmailAddr") or {}).get("Address") or None,
            "phone": (customer.get("PrimaryPhone") or {}).get("FreeFormNumber") or None,
            "address": "\n".join(lines) or None}


class CustomerImporter:
    def __init__(self, qbo: QboPort, timetracker: Engine, store: StateStore, *,
                 fields: tuple[str, ...] = CLIENT_FIELDS, new_customers: bool = False) -> None:
        self.qbo = qbo
        self.timetracker = timetracker
        self.store = store
        self.fields = tuple(f for f in fields if f in CLIENT_FIELDS)
        self.new_customers = new_customers

    def apply(self, change: Change) -> Outcome:
        if change.operation in ("Delete", "Merge"):
            return Outcome(Result.SKIPPED, change.entity_id, f"{change.operation.lower()}d in QBO: TimeTracker keeps "
                                                             "its client (archive it there)")
        customer = read_if_present(self.qbo, "Customer", change.entity_id)
        if customer is None:
            return Outcome(Result.SKIPPED, change.entity_id, "gone from QBO")
        tt_id = self.store.owner_of(change.entity_id, ("client",))
        wanted = client_fields(customer)
        if tt_id is None:
            return self._new_client(change.entity_id, customer, wanted)
        held = self.store.mapped("client", tt_id)
        if held is not None and held.sync_token is not None and str(customer.get("SyncToken")) == held.sync_token:
            # The very version ttsync wrote: an echo, whatever TimeTracker holds now. Compared field by field, a
            # client edited again in TimeTracker since (its export still on the way) would be written back.
            return Outcome(Result.SKIPPED, change.entity_id, "ttsync's own write (its SyncToken): an echo")
        with self.timetracker.begin() as conn:
            row = conn.execute(select(clients).where(clients.c.id == int(tt_id))).first()
            if row is None:
                return Outcome(Result.SKIPPED, change.entity_id, f"client {tt_id} is gone from TimeTracker")
            # Compared as QBO holds them: what ttsync itself sent (an address's blank lines dropped, a phone cut
            # to 30 characters) comes back unchanged in substance, and must not rewrite the client.
            sent = client_fields(customer_request(ClientState(id=row.id, name=row.name or "-", email=row.email,
                                                              phone=row.phone, address=row.address),
                                                  MappingOptions(decode_html=False)))
            changes = {f: wanted[f] for f in self.fields if wanted[f] != sent[f]}
            if not changes:
                return Outcome(Result.SKIPPED, change.entity_id, "nothing QBO may change differs (an echo, or a "
                                                                 "field TimeTracker owns)")
            marked_as_import(conn)
            conn.execute(update(clients).where(clients.c.id == int(tt_id)).values(
                **changes, updated_at=dt.datetime.now(dt.UTC).replace(tzinfo=None)))
        log.info("qbo_customer_imported", qbo_id=change.entity_id, client_id=tt_id, fields=sorted(changes))
        return Outcome(Result.UPDATED, change.entity_id)

    def _new_client(self, qbo_id: str, customer: dict[str, Any], wanted: dict[str, str | None]) -> Outcome:
        if not self.new_customers:
            return Outcome(Result.SKIPPED, qbo_id, "a customer made in QBO (TTSYNC_IMPORT_NEW_CUSTOMERS is off)")
        name = str(customer.get("DisplayName") or "").strip()[:200]
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        with self.timetracker.begin() as conn:
            existing = conn.execute(select(clients.c.id).where(clients.c.name == name)).scalar()
            if existing is None:
                marked_as_import(conn)
                existing = conn.execute(insert(clients).values(
                    name=name, status="active", created_at=now, updated_at=now,
                    **{f: wanted[f] for f in CLIENT_FIELDS}).returning(clients.c.id)).scalar_one()
        self.store.adopt("client", str(existing), customer)
        log.info("qbo_customer_created_client", qbo_id=qbo_id, client_id=existing)
        return Outcome(Result.CREATED, qbo_id)
