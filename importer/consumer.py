"""``ttsync import``: the consumer group on ``<prefix>.qbo.changes`` (the export consumer's loop, with this
handler): each change record is decoded and applied to TimeTracker by the importer of its entity (payments,
invoices, customers: ``apply_*.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from consumer.errors import MalformedEvent
from consumer.kafka_port import PolledRecord
from consumer.writes import Outcome, Result
from importer.metrics import IMPORTED
from importer.notifications import Change, NotificationError
from schemas.codec import headers_to_dict
from schemas.contract import Header


class EntityImporter(Protocol):
    def apply(self, change: Change) -> Outcome: ...


Noted = Callable[[str, Change, Outcome], None]


class ImportHandler:
    def __init__(self, importers: dict[str, EntityImporter], realm_id: str,
                 on_webhook: Callable[[], None] = lambda: None,
                 on_applied: Noted = lambda event_id, change, outcome: None) -> None:
        self.importers = importers  # by QBO entity: Payment, Invoice, Customer
        self.realm_id = realm_id
        self.on_webhook = on_webhook  # a webhook's change: CDC, the source of truth, is asked at once
        self.on_applied = on_applied  # the record's id, once applied (``dlq list`` shows a dead letter resolved)

    def __call__(self, rec: PolledRecord, tier: int | None) -> Outcome:
        try:
            change = Change.decode(rec.value)
        except NotificationError as exc:
            raise MalformedEvent(str(exc), code="malformed_change") from exc
        if change.source == "webhook":
            self.on_webhook()
        if change.realm_id != self.realm_id:
            return Outcome(Result.SKIPPED, reason=f"company {change.realm_id} is not this ttsync's")
        importer = self.importers.get(change.entity)
        outcome = importer.apply(change) if importer is not None else Outcome(
            Result.SKIPPED, reason=f"{change.entity} changes are not imported")
        IMPORTED.labels(change.entity, outcome.result.value).inc()
        if event_id := headers_to_dict(rec.headers).get(Header.EVENT_ID):
            self.on_applied(event_id, change, outcome)
        return outcome
