"""Where a QBO answer becomes a typed error (consumer.errors): one pure function, used by the HTTP client and by
the in-memory QBO of the tests, so that both fail alike.

Intuit's codes (developer.intuit.com, "error codes"): 5010 stale SyncToken, 600 duplicate requestid, 3001
ThrottleExceeded (usually a 429 answered in XML), 3200 AuthenticationFailed (401), 5xx system faults; the rest
(2xxx, 6xxx, 610...) are validation faults about the request itself."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from consumer.errors import (
    DuplicateRequestId,
    QboThrottled,
    QboUnavailable,
    QboValidationFault,
    StaleSyncToken,
    SyncError,
)


@dataclass(frozen=True)
class Answer:
    """One QBO answer, read: its JSON body, or the error it stands for; ``outcome`` labels it for metrics."""

    outcome: str
    body: dict[str, Any] = field(default_factory=dict)
    error: SyncError | None = None


def read_answer(status: int, text: str, *, retry_after: str | None = None,
                default_wait_s: float = 60.0) -> Answer:
    if status == 429:
        wait = retry_after_s(retry_after, default_wait_s)
        return Answer("throttled", error=QboThrottled(f"QBO throttled the realm (429), retry in {wait:.0f}s",
                                                       retry_after_s=wait, detail=text[:2000]))
    if status >= 500:
        return Answer("server_error", error=QboUnavailable(f"QBO answered {status}", detail=text[:2000]))
    try:
        body = json.loads(text)
    except ValueError:
        if status == 200:
            return Answer("bad_response", error=QboUnavailable("QBO answered 200 with a body that is not JSON"))
        return Answer("bad_response", error=QboValidationFault(f"QBO answered {status}: {text[:300]}",
                                                               code=str(status), body=text[:4000],
                                                               http_status=status))
    fault = body.get("Fault") if isinstance(body, dict) else None
    if fault or status >= 400:
        code, error = fault_error(status, body, default_wait_s)
        return Answer(f"fault_{code}", error=error)
    return Answer("ok", body=dict(body))


def fault_error(status: int, body: Any, default_wait_s: float = 60.0) -> tuple[str, SyncError]:
    """A Fault body (``{"Fault": {"Error": [...]}}``) as (QBO's code, the typed error)."""
    errors = ((body if isinstance(body, dict) else {}).get("Fault") or {}).get("Error") or [{}]
    first = errors[0]
    code = str(first.get("code", status))
    message = f"QBO Fault {code}: {first.get('Message', '')}: {first.get('Detail', '')}".strip(": ")
    raw = json.dumps(body)[:4000]
    if code == "5010":
        return code, StaleSyncToken(message, detail=raw)
    if code == "600":
        return code, DuplicateRequestId(message, detail=raw)
    if code == "3001":
        return code, QboThrottled(message, retry_after_s=default_wait_s, detail=raw)
    if code == "3200" or status == 401:
        return code, QboUnavailable(message, detail=raw)
    return code, QboValidationFault(message, code=code, body=raw, http_status=status)


def retry_after_s(value: str | None, default: float) -> float:
    if value and re.fullmatch(r"\d+(\.\d+)?", value.strip()):
        return float(value)
    return default
