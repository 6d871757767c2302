"""What the applier decided, as values: the QBO write an event needs (``Write``), or its final ``Outcome``.
``consumer.prepare`` makes them, ``consumer.execute`` carries writes out; nothing here does I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from consumer.mapping import request_id
from consumer.qbo_queries import NaturalKey
from schemas.events import EventEnvelope, InvoiceState


class Operation(enum.Enum):
    CREATE = "create"
    UPDATE = "update"  # sparse, of the entity the map holds
    ADOPT = "adopt"  # sparse update of an entity found in QBO (a lost attempt's, or the old connector's)
    VOID = "voided"
    DELETE = "deleted"
    DEACTIVATE = "deactivate"


class Result(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    ADOPTED = "adopted"
    VOIDED = "voided"
    DELETED = "deleted"
    DEACTIVATED = "deactivated"
    SKIPPED = "skipped"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Outcome:
    result: Result
    qbo_id: str | None = None
    reason: str = ""


# Fields QBO fixes at creation: a customer's currency (sending it again, even unchanged, risks a Fault when the
# customer was made elsewhere, e.g. by a person or for an invoice in another currency).
CREATE_ONLY = {"Customer": ("CurrencyRef",)}


@dataclass(frozen=True)
class Write:
    """One event's write to QBO, with everything needed to carry it out and to recover from a lost answer.

    ``generation`` names the delivery (mapping.request_id); ``lookup`` finds what an earlier attempt of a create
    wrote; ``settle`` (an invoice with amount paid beyond its payment rows) writes its settlement Payment after the
    invoice, ``void_settlement_first`` voids it before; ``payments_may_block``: QBO refusing the write because of
    payments (another aggregate, maybe not applied yet) is a wait, not a dead letter."""

    event: EventEnvelope
    operation: Operation
    entity: str
    body: dict[str, Any] = field(default_factory=dict)
    qbo_id: str | None = None
    sync_token: str | None = None
    customer_ref: str | None = None
    lookup: NaturalKey | None = None
    generation: str = ""
    retry_of_pending: bool = False
    void_settlement_first: bool = False
    settle: InvoiceState | None = None
    payments_may_block: bool = False

    @property
    def batchable(self) -> bool:
        """A plain create, or an update (an adoption is one) with the SyncToken known, and nothing to write after
        it: one item of a batch request. A create that follows a pending one goes alone (it looked for the lost
        attempt first)."""
        if self.settle is not None:
            return False
        if self.operation is Operation.CREATE:
            return not self.retry_of_pending
        return self.operation in (Operation.UPDATE, Operation.ADOPT) and bool(self.qbo_id and self.sync_token)

    @property
    def batch_operation(self) -> str:
        """The operation's name in a QBO batch item: an adoption is a sparse update."""
        return "create" if self.operation is Operation.CREATE else "update"

    def rid(self, operation: str, body: Any = None) -> str:
        """A requestid of this delivery of the event (mapping.request_id)."""
        return request_id(self.event.event_id, operation, body, self.generation)


def sparse_body(entity: str, body: dict[str, Any], qbo_id: str, token: str) -> dict[str, Any]:
    """A sparse update of ``qbo_id`` at ``token``: never the fields QBO fixes at creation."""
    keep = {k: v for k, v in body.items() if k not in CREATE_ONLY.get(entity, ())}
    return {**keep, "Id": qbo_id, "SyncToken": token, "sparse": True}
