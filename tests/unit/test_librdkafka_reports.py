"""Matching librdkafka's failure reports to the records of a batch (delivery reports come for failures only)."""

from __future__ import annotations

from dataclasses import dataclass

from producer.librdkafka_publisher import DeliveryFailed, _Sent
from schemas.kafka_client import OutRecord


@dataclass
class _Error:
    text: str

    def __str__(self) -> str:
        return self.text

    def code(self) -> int:
        return 10

    def retriable(self) -> bool:
        return False


@dataclass
class _Message:
    record: OutRecord

    def topic(self) -> str:
        return self.record.topic

    def key(self) -> bytes | None:
        return self.record.key

    def value(self) -> bytes | None:
        return self.record.value


def test_each_report_marks_one_record_even_when_two_records_are_identical() -> None:
    same = OutRecord("t.client", b"7", b"{}", [])
    other = OutRecord("t.client", b"8", b"{}", [])
    sent = _Sent([same, other, same])
    for _ in range(2):
        sent.on_delivery(_Error("Broker: Message size too large"), _Message(same))
    sent.positions_of_reports()
    assert sorted(sent.failed) == [0, 2]
    assert all(isinstance(e, DeliveryFailed) and not e.retriable and e.code == 10 for e in sent.failed.values())


def test_a_report_for_no_record_of_the_batch_fails_the_whole_batch() -> None:
    sent = _Sent([OutRecord("t.client", b"7", b"{}", []), OutRecord("t.client", b"8", b"{}", [])])
    sent.on_delivery(_Error("mangled"), _Message(OutRecord("t.client", b"9", b"{}", [])))
    sent.positions_of_reports()
    assert sorted(sent.failed) == [0, 1]


def test_no_reports_no_failures() -> None:
    sent = _Sent([OutRecord("t.client", b"7", b"{}", [])])
    sent.positions_of_reports()
    assert sent.failed == {}
