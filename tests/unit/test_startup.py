"""ttsync.startup.wait_for_services: what a worker's start-up waits for, and for how long (a fake clock)."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from producer.migrate import SchemaNotMigrated
from ttsync.startup import wait_for_services


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def refused() -> OperationalError:
    return OperationalError("connect", {}, Exception('connection to server at "127.0.0.1", port 1 failed'))


def test_a_database_that_comes_back_within_the_budget_is_waited_for() -> None:
    clock, failures = Clock(), iter([refused(), refused(), refused()])

    def start() -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "running"

    assert wait_for_services(start, budget_s=60, what="relay", sleep=clock.sleep, clock=clock) == "running"
    assert len(clock.sleeps) == 3 and clock.sleeps[0] < clock.sleeps[2], "backoff between the attempts"


def test_a_database_still_down_when_the_budget_is_spent_fails_as_it_would_have_at_once() -> None:
    clock = Clock()

    def start() -> None:
        raise refused()

    with pytest.raises(OperationalError):
        wait_for_services(start, budget_s=30, what="consumer", sleep=clock.sleep, clock=clock)
    assert clock.now == pytest.approx(30), "waits exactly its budget, the last sleep cut to what is left"


def test_without_a_budget_nothing_is_waited_for() -> None:
    """The one-shot forms (relay --once, consume --max-seconds): a script wants exit 4 at once."""
    clock = Clock()

    def start() -> None:
        raise refused()

    with pytest.raises(OperationalError):
        wait_for_services(start, budget_s=0, what="relay", sleep=clock.sleep, clock=clock)
    assert clock.sleeps == []


def test_a_failure_no_waiting_can_mend_is_not_waited_for() -> None:
    """An unmigrated database or a wrong setting does not fix itself: exit 2 at once."""
    clock = Clock()

    def start() -> None:
        raise SchemaNotMigrated("run `ttsync db upgrade`")

    with pytest.raises(SchemaNotMigrated):
        wait_for_services(start, budget_s=600, what="relay", sleep=clock.sleep, clock=clock)
    assert clock.sleeps == []
