"""``ttsync import``: the consumer group on ``<prefix>.qbo.changes`` (the export consumer's loop, with this
handler): each change record is decoded and applied to TimeTracker by the importer of its entity."""

from __future__ import annotations

from consumer.errors import MalformedEvent
from consumer.kafka_port import PolledRecord
from consumer.writes import Outcome, Result
from importer.apply_payment import PaymentImporter
from importer.notifications import Change, NotificationError


class ImportHandler:
    def __init__(self, payments: PaymentImporter, realm_id: str) -> None:
        self.payments = payments
        self.realm_id = realm_id

    def __call__(self, rec: PolledRecord, tier: int | None) -> Outcome:
        try:
            change = Change.decode(rec.value)
        except NotificationError as exc:
            raise MalformedEvent(str(exc), code="malformed_change") from exc
        if change.realm_id != self.realm_id:
            return Outcome(Result.SKIPPED, reason=f"company {change.realm_id} is not this ttsync's")
        if change.entity == "Payment":
            return self.payments.apply(change)
        return Outcome(Result.SKIPPED, reason=f"{change.entity} changes are not imported (payments are)")
