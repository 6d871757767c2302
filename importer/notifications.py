"""What QBO says changed, read from a webhook delivery or a CDC answer: pure, no I/O.

Intuit signs a webhook delivery with ``intuit-signature``: base64 of HMAC-SHA256 of the raw body, keyed with the
app's verifier token. Two payload shapes are in use (../shared/qbo-notes.md §8): the classic one,
``{"eventNotifications": [{"realmId", "dataChangeEvent": {"entities": [{"name", "id", "operation",
"lastUpdated"}]}}]}``, and the CloudEvents array Intuit moved to, ``[{"specversion": "1.0", "id", "type":
"qbo.<entity>.<created|updated|deleted|voided|merged>.v1", "time", "intuitentityid", "intuitaccountid"}]``. Both
become ``Change`` values; a webhook is a hint that the entity changed, what changed is read from QBO."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from schemas.contract import Header
from schemas.kafka_client import OutRecord

# The QBO entities the import direction reads; a notification of any other is acknowledged and dropped.
IMPORTED_ENTITIES = ("Payment", "Invoice", "Customer")
OPERATIONS = ("Create", "Update", "Delete", "Void", "Merge")
_CLOUD_OPERATIONS = {"created": "Create", "updated": "Update", "deleted": "Delete", "voided": "Void",
                     "merged": "Merge"}


class NotificationError(ValueError):
    """A delivery that is not one of Intuit's payloads (said in the 400 answer and the log, never its body)."""


@dataclass(frozen=True)
class Change:
    """One QBO entity that changed: a hint, the entity itself is read from QBO when it is applied."""

    realm_id: str
    entity: str
    entity_id: str
    operation: str
    last_updated: str  # ISO 8601, as QBO gave it ("" when it gave none)
    source: str  # webhook | cdc
    notification_id: str = ""  # the CloudEvent id, when there is one

    @property
    def key(self) -> bytes:
        """Kafka key: every change of one entity on one partition, in order."""
        return f"{self.realm_id}:{self.entity}:{self.entity_id}".encode()

    def record(self, topic: str) -> OutRecord:
        """The change as the record the webhook receiver and the CDC poller write to ``<prefix>.qbo.changes``. Its
        id (one per record) is what the importer records once it applied it: ``ttsync dlq list`` tells a dead letter
        replayed and applied since (resolved) by it."""
        kind = f"qbo.{self.entity}.{self.operation}".lower()
        return OutRecord(topic, self.key, self.encode(), [(Header.EVENT_ID, str(uuid.uuid4()).encode()),
                                                          (Header.EVENT_TYPE, kind.encode())])

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, value: bytes | None) -> Change:
        try:
            data = json.loads(value or b"")
            return cls(**{k: str(data[k]) for k in ("realm_id", "entity", "entity_id", "operation",
                                                    "last_updated", "source")},
                       notification_id=str(data.get("notification_id", "")))
        except (ValueError, KeyError, TypeError) as exc:
            raise NotificationError(f"not a change record: {type(exc).__name__}: {exc}") from None


def signature(body: bytes, verifier_token: str) -> str:
    return base64.b64encode(hmac.new(verifier_token.encode(), body, hashlib.sha256).digest()).decode()


def signature_valid(body: bytes, header: str | None, verifier_token: str) -> bool:
    """Constant time: a forger learns nothing from how long the refusal took."""
    if not header or not verifier_token:
        return False
    return hmac.compare_digest(signature(body, verifier_token).encode(), header.strip().encode())


def parse_delivery(body: bytes) -> list[Change]:
    """Every entity change of one webhook delivery, either shape; raises ``NotificationError``."""
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise NotificationError(f"body is not JSON: {exc}") from None
    if isinstance(payload, list):
        return [c for event in payload if (c := _cloud_event(event)) is not None]
    if isinstance(payload, dict) and isinstance(payload.get("eventNotifications"), list):
        return [c for n in payload["eventNotifications"] for c in _classic(n)]
    raise NotificationError("neither Intuit's eventNotifications payload nor a CloudEvents array")


def _classic(notification: Any) -> list[Change]:
    if not isinstance(notification, dict) or not notification.get("realmId"):
        raise NotificationError("an eventNotifications entry without realmId")
    entities = (notification.get("dataChangeEvent") or {}).get("entities")
    if not isinstance(entities, list):
        raise NotificationError("an eventNotifications entry without dataChangeEvent.entities")
    out = []
    for e in entities:
        if not isinstance(e, dict) or not e.get("name") or not e.get("id") or e.get("operation") not in OPERATIONS:
            raise NotificationError(f"an entity without name, id or a known operation: {str(e)[:200]}")
        out.append(Change(str(notification["realmId"]), str(e["name"]), str(e["id"]), str(e["operation"]),
                          str(e.get("lastUpdated") or ""), "webhook"))
    return out


def _cloud_event(event: Any) -> Change | None:
    if not isinstance(event, dict) or event.get("specversion") != "1.0":
        raise NotificationError("a CloudEvents entry without specversion 1.0")
    kind = str(event.get("type") or "").split(".")
    if len(kind) < 3 or kind[0] != "qbo" or kind[2] not in _CLOUD_OPERATIONS:
        raise NotificationError(f"a CloudEvent of type {event.get('type')!r}: not qbo.<entity>.<operation>")
    realm, entity_id = event.get("intuitaccountid"), event.get("intuitentityid")
    if not realm or not entity_id:
        raise NotificationError("a CloudEvent without intuitaccountid or intuitentityid")
    entity = _entity_name(kind[1])
    return Change(str(realm), entity, str(entity_id), _CLOUD_OPERATIONS[kind[2]], str(event.get("time") or ""),
                  "webhook", str(event.get("id") or ""))


def _entity_name(lowered: str) -> str:
    """``invoice`` -> ``Invoice``, ``journalentry`` stays as QBO would not name it: only what we import matters."""
    return next((e for e in IMPORTED_ENTITIES if e.lower() == lowered.lower()), lowered[:1].upper() + lowered[1:])


def changes_from_cdc(realm_id: str, answer: dict[str, Any]) -> list[Change]:
    """QBO's CDC answer (``{"CDCResponse": [{"QueryResponse": [{"<Entity>": [...]}]}]}``) as changes: a deleted
    entity comes back as ``{"Id", "status": "Deleted"}``."""
    out = []
    for response in answer.get("CDCResponse") or []:
        for query in response.get("QueryResponse") or []:
            for entity, rows in query.items():
                if not isinstance(rows, list):
                    continue
                for row in rows:
                    deleted = str(row.get("status", "")).lower() == "deleted"
                    updated = str((row.get("MetaData") or {}).get("LastUpdatedTime") or "")
                    out.append(Change(realm_id, entity, str(row.get("Id")), "Delete" if deleted else "Update",
                                      updated, "cdc"))
    return out
