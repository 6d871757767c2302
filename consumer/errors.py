"""What can go wrong while syncing one event, as types: the retry / dead-letter policy reads them.

    SyncError
    ├── RetryableError      try again later: in place a few times, then retry topics
    │   ├── QboUnavailable      network error, timeout, 5xx, a token endpoint answering no token    (*)
    │   ├── QboThrottled        429 or Fault 3001 ThrottleExceeded (wait Retry-After, else 60 s)    (*)
    │   ├── StaleSyncToken      5010 after re-reading too often
    │   ├── DuplicateRequestId  600: QBO saw this requestid and does not repeat its answer; every writer
    │   │                       translates it (look the entity up); one that escapes waits for QBO to show it
    │   ├── DependencyNotReady  e.g. a payment whose invoice is not in QBO yet
    │   └── StateUnavailable    the state database is unreachable (restart, failover)              (*)
    ├── PermanentError      can never succeed as it is: dead-letter topic at once
    │   ├── MalformedEvent      not JSON, unknown schema version, invalid payload
    │   ├── MissingMapping      no QBO account/item for a TimeTracker value, and creating it is not allowed
    │   ├── QboValidationFault  QBO refused the request (2xxx, 6xxx, 610, ...)
    │   ├── MappingError        the record cannot be expressed in QBO (e.g. DocNumber over 21 characters)
    │   └── EarlierVersionDeadLettered  what to do depends on an earlier version, which was dead-lettered
    └── FatalError          nothing can succeed until a person acts: stop consuming, commit nothing
        ├── ReconnectNeeded     invalid_grant: the QBO connection must be re-authorised (exit 3)
        └── ConfigurationError  a setting is wrong or missing, e.g. TTSYNC_SECRET_KEY (exit 2)

(*) not tied to the record (``tied_to_record = False``), like any exception nobody classified: never a reason to
dead-letter a record, and many records in a row failing alike pause the consumer (consumer.outage).
"""

from __future__ import annotations

from typing import Any


class SyncError(Exception):
    code: str = "sync_error"
    retryable: bool = False
    tied_to_record: bool = True
    """False for failures of a service (network, QBO 5xx, throttling, the token endpoint, the state database): they
    never dead-letter a record, and many in a row pause the consumer (consumer.outage)."""

    def __init__(self, message: str, *, code: str | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.detail = detail


class RetryableError(SyncError):
    retryable = True


class QboUnavailable(RetryableError):
    code = "qbo_unavailable"
    tied_to_record = False


class QboThrottled(RetryableError):
    code = "3001"
    tied_to_record = False

    def __init__(self, message: str, *, retry_after_s: float = 60.0, detail: Any = None) -> None:
        super().__init__(message, detail=detail)
        self.retry_after_s = retry_after_s


class StaleSyncToken(RetryableError):
    code = "5010"


class DuplicateRequestId(RetryableError):
    """Fault 600: QBO saw this requestid before and did not say what it answered then. The write happened: the
    caller finds what it wrote (by natural key) instead of writing again."""

    code = "600"


class DependencyNotReady(RetryableError):
    code = "dependency_not_ready"


class StateUnavailable(RetryableError):
    tied_to_record = False
    code = "state_unavailable"


class PermanentError(SyncError):
    retryable = False


class MalformedEvent(PermanentError):
    code = "malformed_event"


class MissingMapping(PermanentError):
    code = "missing_mapping"


class MappingError(PermanentError):
    code = "mapping_error"


class EarlierVersionDeadLettered(PermanentError):
    """A version whose fate depends on an earlier one (an overdue invoice never seen sent) while that one is in the
    dead-letter topic: it cannot come back on its own, so this one follows it there at once, to be replayed after
    it, instead of waiting in the retry topics until the dependency wait runs out."""

    code = "earlier_version_dead_lettered"


class QboValidationFault(PermanentError):
    """A Fault QBO answered. ``code`` is QBO's (a string, e.g. "6240"); ``body`` the whole Fault JSON."""

    def __init__(self, message: str, *, code: str, body: str = "", http_status: int = 400) -> None:
        super().__init__(message, code=code, detail=body)
        self.body = body
        self.http_status = http_status


class FatalError(SyncError):
    retryable = False


class ReconnectNeeded(FatalError):
    code = "invalid_grant"


class StopRequested(Exception):
    """The consumer is stopping in the middle of a record: leave it uncommitted (it is read again)."""


class ConsumerStuck(Exception):
    """The consumer could not join its group for too long (the client can spin on an unknown coordinator), or a
    service outage outlasted its pause (consumer.outage): exiting lets a supervisor start a fresh one. Not a
    SyncError: no event is at fault."""


class MemberStuck(ConsumerStuck):
    """The Kafka client stopped serving this member (no stable group, partitions with records not fetched). The
    loop first replaces the member in place (``ConsumerPort.renew_membership``); only a member that keeps getting
    stuck ends the consumer (``watchdog.RenewalBudget``)."""


class ConfigurationError(FatalError):
    """A setting must be fixed (exit 2): reconnecting QBO would not help, and could overwrite stored tokens."""

    code = "configuration_error"
