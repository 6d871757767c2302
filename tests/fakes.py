"""In-memory stand-ins for the I/O ports, for unit tests (integration tests use the real things)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from producer.kafka_publisher import OutRecord


class StubPublisher:
    """Records what would have been sent; ``fail_when`` decides per record whether the broker refuses it."""

    def __init__(self, fail_when: Callable[[OutRecord], BaseException | None] | None = None) -> None:
        self.sent: list[OutRecord] = []
        self.fail_when = fail_when
        self.closed = False

    def send(self, records: Sequence[OutRecord]) -> list[BaseException | None]:
        results: list[BaseException | None] = []
        for r in records:
            err = self.fail_when(r) if self.fail_when else None
            if err is None:
                self.sent.append(r)
            results.append(err)
        return results

    def wait(self, handle: list[BaseException | None]) -> list[BaseException | None]:
        return handle

    def close(self) -> None:
        self.closed = True
