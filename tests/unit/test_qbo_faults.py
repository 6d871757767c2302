"""Where a QBO answer becomes a typed error (consumer.qbo_faults): one reading, for the HTTP client and the fake."""

from __future__ import annotations

import json

from consumer.errors import (
    DuplicateRequestId,
    QboThrottled,
    QboUnavailable,
    QboValidationFault,
    StaleSyncToken,
)
from consumer.qbo_faults import read_answer
from consumer.retry_policy import RetryPolicy, StepKind


def fault(code: str, status: int = 400) -> tuple[int, str]:
    return status, json.dumps({"Fault": {"Error": [{"Message": "m", "Detail": "d", "code": code}],
                                          "type": "ValidationFault"}})


def test_each_fault_code_is_its_type() -> None:
    assert isinstance(read_answer(*fault("5010")).error, StaleSyncToken)
    assert isinstance(read_answer(*fault("600")).error, DuplicateRequestId)
    assert isinstance(read_answer(*fault("3200", 401)).error, QboUnavailable)
    refused = read_answer(*fault("6240")).error
    assert isinstance(refused, QboValidationFault) and refused.code == "6240"
    assert read_answer(200, '{"Invoice": {"Id": "1"}}').body == {"Invoice": {"Id": "1"}}


def test_fault_3001_is_throttling_whatever_the_http_status() -> None:
    """ThrottleExceeded is QBO's 3001, usually on a 429; in a JSON Fault on another status it is still throttling
    (wait, not tied to the record), never "unavailable" nor a validation fault."""
    answer = read_answer(*fault("3001", 403), default_wait_s=42)
    assert isinstance(answer.error, QboThrottled) and answer.error.retry_after_s == 42
    step = RetryPolicy().next_step(answer.error, 1, None)
    assert step.kind is StepKind.RETRY_IN_PLACE and step.delay_s == 42
    on_429 = read_answer(429, "<IntuitResponse/>", retry_after="7")
    assert isinstance(on_429.error, QboThrottled) and on_429.error.retry_after_s == 7


def test_a_duplicate_requestid_that_escapes_its_writer_is_retried_not_dead_lettered_at_once() -> None:
    error = read_answer(*fault("600")).error
    assert error is not None and error.retryable
    assert RetryPolicy().next_step(error, 1, None).kind is StepKind.RETRY_IN_PLACE


def test_server_errors_and_bodies_that_are_not_json() -> None:
    assert isinstance(read_answer(503, "busy").error, QboUnavailable)
    assert isinstance(read_answer(200, "<html>").error, QboUnavailable)
    assert isinstance(read_answer(400, "<html>").error, QboValidationFault)


def test_a_query_without_an_entity_returns_rows_not_lists() -> None:
    from tests.fakes import InMemoryQbo

    qbo = InMemoryQbo()
    rows = qbo.query("SELECT * FROM Account")
    assert rows and all(isinstance(r, dict) and "Id" in r for r in rows)
