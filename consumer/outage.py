"""When failures stop being about records: a circuit breaker over consecutive failures that share a cause.

One record failing with a network error, a 5xx or an unclassified exception may be that record's bad luck: it
takes the retry topics. But when record after record fails with the same cause and nothing succeeds in between,
the cause is the service (QBO down, a token endpoint answering an HTML page, a proxy), not the records. Then
forwarding each one onwards would only drain the stream into the retry topics; the consumer pauses instead
(waits in place and probes with the record at hand), and stops with a clear message when the outage outlasts
``max_open_s``: a supervisor restarts it, and the records are read again from the committed offsets.

Pure: the caller passes the time; ``consumer.group_consumer`` feeds it, ``consumer.retry_policy`` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consumer.errors import SyncError


def tied_to_record(error: BaseException) -> bool:
    """Whether a failure says something about the record itself. Network, throttling, the token endpoint and the
    state database do not; neither does an exception nobody classified (we cannot tell, so it is never reason
    enough to dead-letter a record)."""
    return isinstance(error, SyncError) and error.tied_to_record


def cause_of(error: BaseException) -> str:
    """Failures with the same cause: the same type and code (not the message, which names the record)."""
    return f"{type(error).__name__}:{getattr(error, 'code', '')}"


@dataclass
class OutageBreaker:
    threshold: int = 5
    """Distinct records failing one after another with the same cause before the consumer pauses."""
    max_open_s: float = 900.0
    """How long a paused consumer waits for the cause to go away before it stops (0 = for ever)."""
    _cause: str | None = None
    _records: set[tuple[str, int, int]] = field(default_factory=set)
    _opened_at: float | None = None

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    @property
    def cause(self) -> str | None:
        return self._cause

    def failure(self, error: BaseException, record: tuple[str, int, int], now: float) -> bool:
        """Count a failure of ``record`` (topic, partition, offset); returns whether the breaker just opened."""
        if tied_to_record(error):
            self.success()  # the service answered: whatever went wrong was this record's
            return False
        cause = cause_of(error)
        if cause != self._cause:
            self._cause, self._records, self._opened_at = cause, set(), None
        self._records.add(record)
        if self._opened_at is None and len(self._records) >= self.threshold:
            self._opened_at = now
            return True
        return False

    def success(self) -> None:
        self._cause, self._records, self._opened_at = None, set(), None

    def open_for_s(self, now: float) -> float:
        return 0.0 if self._opened_at is None else now - self._opened_at

    def outlasted(self, now: float) -> bool:
        return bool(self.max_open_s) and self.open_for_s(now) > self.max_open_s
