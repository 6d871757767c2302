"""A service outage pauses the consumer instead of draining the stream; a bad token endpoint is an outage."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from consumer.errors import MissingMapping, QboUnavailable, StateUnavailable
from consumer.outage import OutageBreaker, cause_of, tied_to_record


def test_only_failures_of_distinct_records_with_one_cause_open_the_breaker() -> None:
    breaker = OutageBreaker(threshold=3, max_open_s=60)
    down = QboUnavailable("QBO answered 503")
    assert not breaker.failure(down, ("t", 0, 1), now=0)
    assert not breaker.failure(down, ("t", 0, 1), now=1)  # the same record again: its own bad luck so far
    assert not breaker.failure(down, ("t", 0, 2), now=2)
    assert breaker.failure(down, ("t", 1, 7), now=3) and breaker.is_open  # three records in a row
    assert not breaker.outlasted(now=60) and breaker.outlasted(now=64)
    breaker.success()
    assert not breaker.is_open and breaker.open_for_s(100) == 0


def test_a_record_tied_failure_or_another_cause_breaks_the_streak() -> None:
    breaker = OutageBreaker(threshold=2)
    breaker.failure(QboUnavailable("503"), ("t", 0, 1), now=0)
    breaker.failure(MissingMapping("no account"), ("t", 0, 2), now=1)  # QBO answered: the record's fault
    assert not breaker.failure(QboUnavailable("503"), ("t", 0, 3), now=2)
    assert not breaker.failure(StateUnavailable("db"), ("t", 0, 4), now=3)  # another cause starts over
    assert breaker.failure(StateUnavailable("db"), ("t", 0, 5), now=4)


def test_what_is_tied_to_a_record() -> None:
    assert tied_to_record(MissingMapping("m")) and not tied_to_record(QboUnavailable("x"))
    assert not tied_to_record(KeyError("unclassified"))
    assert cause_of(QboUnavailable("a", code="token_endpoint_unavailable")) == \
        "QboUnavailable:token_endpoint_unavailable"


class _Answer:
    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        self.status_code, self.content, self.headers = status, body, {"Content-Type": content_type}

    def json(self) -> Any:
        import json

        return json.loads(self.content)


@pytest.mark.parametrize("answer", [
    _Answer(200, b"<html><body>Service temporarily unavailable</body></html>", "text/html"),
    _Answer(200, b'{"token_type": "bearer"}', "application/json"),  # JSON, but no tokens
    _Answer(200, b"[]", "application/json"),
])
def test_a_token_endpoint_answering_200_without_tokens_is_an_outage(answer: _Answer) -> None:
    """It once raised a JSON error nobody classified, and every event was dead-lettered."""
    from consumer.token_store import TokenCipher, TokenStore

    # Only the token endpoint's answer is read here: no state database is needed.
    store = TokenStore(None, "123", TokenCipher("a-passphrase-of-16+chars"),  # type: ignore[arg-type]
                       token_url="http://token.invalid/", client_id="c", client_secret="s")

    class Session(requests.Session):
        def post(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            return answer

    store._session = Session()
    with pytest.raises(QboUnavailable) as raised:
        store._call_token_endpoint("refresh-token")
    assert raised.value.code == "token_endpoint_unavailable" and not tied_to_record(raised.value)
