"""In-memory stand-ins for the I/O ports, for unit tests (integration tests use the real things)."""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from consumer.errors import QboUnavailable
from consumer.kafka_port import Partition
from consumer.qbo_faults import read_answer
from schemas.kafka_client import OutRecord
from ttsync.qbo_sandbox.company import Company
from ttsync.qbo_sandbox.oauth import SANDBOX_CLIENT_ID, AccessToken
from ttsync.qbo_sandbox.server import Api, SandboxConfig, SandboxState


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


class InMemoryQbo:
    """``consumer.qbo_port.QboPort`` in-process: the sandbox's QBO (its company model, requestid cache and Faults)
    without HTTP, tokens or rate limits, its answers read by the same ``consumer.qbo_faults`` as the real client's.

    ``lose_answer("create", "Customer", nth=2)``: the second such call from now happens in QBO, and its answer is
    lost (a timeout after QBO applied it); ``refuse("create", "Invoice")``: the next such call is answered 503 and
    never reaches QBO."""

    def __init__(self, realm: str = "9130000000000001", **config: Any) -> None:
        self.state = SandboxState(SandboxConfig(throttle_enabled=False, **config))
        self.api = Api(self.state)
        self.realm = realm
        self.state.authority.access_tokens["AT-in-memory"] = AccessToken(SANDBOX_CLIENT_ID, realm, float("inf"))
        self._lost: dict[tuple[str, str], list[int]] = {}  # countdowns to the calls whose answer is lost
        self._refused: dict[tuple[str, str], list[int]] = {}  # countdowns to the calls refused before QBO
        self.calls: list[tuple[str, str]] = []  # (operation, entity), in order
        self.batch_budget: int | None = None  # batch requests free now (reserve_batch); None: unlimited

    @property
    def company(self) -> Company:
        return self.state.company(self.realm)

    def lose_answer(self, operation: str, entity: str, nth: int = 1) -> None:
        self._lost.setdefault((operation, entity), []).append(nth)

    def refuse(self, operation: str, entity: str, nth: int = 1) -> None:
        self._refused.setdefault((operation, entity), []).append(nth)

    @staticmethod
    def _due(countdowns: list[int]) -> bool:
        countdowns[:] = [n - 1 for n in countdowns]
        if 0 in countdowns:
            countdowns.remove(0)
            return True
        return False

    def _call(self, operation: str, entity: str, method: str, path: str, *, params: dict[str, str] | None = None,
              body: Any = None, text: str | None = None) -> dict[str, Any]:
        self.calls.append((operation, entity))
        if self._due(self._refused.get((operation, entity), [])):
            raise QboUnavailable(f"in-memory QBO: {operation} {entity} answered 503")
        data = json.dumps(body).encode() if body is not None else (text or "").encode()
        reply = self.api.handle(method, f"/v3/company/{self.realm}/{path}", {"minorversion": "75", **(params or {})},
                                data, {"authorization": "Bearer AT-in-memory"})
        answer = read_answer(reply.status, reply.body if isinstance(reply.body, str) else json.dumps(reply.body),
                             retry_after=reply.headers.get("Retry-After"))
        if self._due(self._lost.get((operation, entity), [])):
            raise QboUnavailable(f"in-memory QBO: the answer to {operation} {entity} was lost")
        if answer.error is not None:
            raise answer.error
        return answer.body

    def create(self, entity: str, body: dict[str, Any], requestid: str) -> dict[str, Any]:
        return dict(self._call("create", entity, "POST", entity.lower(), params={"requestid": requestid},
                               body=body)[entity])

    def update(self, entity: str, body: dict[str, Any], requestid: str) -> dict[str, Any]:
        return dict(self._call("update", entity, "POST", entity.lower(), params={"requestid": requestid},
                               body=body)[entity])

    def read(self, entity: str, qbo_id: str) -> dict[str, Any]:
        return dict(self._call("read", entity, "GET", f"{entity.lower()}/{qbo_id}")[entity])

    def void(self, entity: str, qbo_id: str, sync_token: str, requestid: str) -> dict[str, Any]:
        params = {"operation": "update", "include": "void"} if entity == "Payment" else {"operation": "void"}
        body = {"Id": qbo_id, "SyncToken": sync_token, **({"sparse": True} if entity == "Payment" else {})}
        return dict(self._call("void", entity, "POST", entity.lower(), params={**params, "requestid": requestid},
                               body=body)[entity])

    def delete(self, entity: str, qbo_id: str, sync_token: str, requestid: str) -> dict[str, Any]:
        return dict(self._call("delete", entity, "POST", entity.lower(),
                               params={"operation": "delete", "requestid": requestid},
                               body={"Id": qbo_id, "SyncToken": sync_token})[entity])

    def query(self, sql: str, entity: str = "") -> list[dict[str, Any]]:
        response = self._call("query", entity, "POST", "query", text=sql).get("QueryResponse") or {}
        if entity:
            return list(response.get(entity, []))
        return [row for rows in response.values() if isinstance(rows, list) for row in rows]

    def cdc(self, entities: list[str], changed_since: str) -> dict[str, Any]:
        return self._call("cdc", "CDC", "GET", "cdc", params={"entities": ",".join(entities),
                                                            "changedSince": changed_since})

    def reserve_batch(self) -> bool:
        """``batch_budget``: how many batch requests are free (None: always one)."""
        if self.batch_budget is None:
            return True
        if self.batch_budget > 0:
            self.batch_budget -= 1
            return True
        return False

    def batch(self, items: list[dict[str, Any]], requestid: str | None = None) -> list[dict[str, Any]]:
        params = {"requestid": requestid} if requestid else {}
        return list(self._call("batch", "Batch", "POST", "batch", params=params,
                               body={"BatchItemRequest": items}).get("BatchItemResponse", []))


@dataclass(frozen=True)
class StubRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp: int


class StubBroker:
    """An in-memory Kafka for ``consumer.kafka_port.ConsumerPort`` (as dramatiq's ``StubBroker``): topics of
    ``partitions`` partitions, records keyed to a partition by their key, committed offsets per group. ``fail_sends``
    makes the next sends fail (a broker that does not acknowledge)."""

    def __init__(self, partitions: int = 1) -> None:
        self.partitions = partitions
        self.logs: dict[Partition, list[StubRecord]] = {}
        self.committed: dict[tuple[str, Partition], int] = {}
        self.fail_sends = 0
        self.fail_commits: list[Exception] = []  # raised by the next commits, one each
        self.fail_polls: list[Exception] = []  # raised by the next polls, one each
        self.fail_renewals: list[Exception] = []  # raised by the next renewals, once the old member has left

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None,
                headers: Sequence[tuple[str, bytes]] = ()) -> StubRecord:
        tp = Partition(topic, zlib.crc32(key) % self.partitions if key else 0)
        log = self.logs.setdefault(tp, [])
        record = StubRecord(topic, tp.partition, len(log), key, value, list(headers), int(time.time() * 1000))
        log.append(record)
        return record

    def records(self, topic: str) -> list[StubRecord]:
        return [r for tp, log in sorted(self.logs.items()) if tp.topic == topic for r in log]

    def consumer(self, group_id: str, max_poll_records: int = 100) -> StubConsumer:
        return StubConsumer(self, group_id, max_poll_records)


class StubConsumer:
    """One member of a consumer group on a ``StubBroker``, owning every partition of its topics."""

    def __init__(self, broker: StubBroker, group_id: str, max_poll_records: int) -> None:
        self.broker = broker
        self.group_id = group_id
        self.max_poll_records = max_poll_records
        self.fetch_positions: dict[Partition, int] = {}
        self._paused: set[Partition] = set()
        self.closed = False
        self.renewals = 0
        self._topics: list[str] = []

    def renew_membership(self) -> None:
        """A fresh member: positions from the committed offsets, nothing paused."""
        self.fetch_positions, self._paused = {}, set()
        if self.broker.fail_renewals:
            raise self.broker.fail_renewals.pop(0)
        self.renewals += 1
        self.subscribe(self._topics)

    def subscribe(self, topics: list[str]) -> None:
        self._topics = list(topics)
        for topic in topics:
            for n in range(self.broker.partitions):
                tp = Partition(topic, n)
                self.broker.logs.setdefault(tp, [])
                self.fetch_positions[tp] = self.broker.committed.get((self.group_id, tp), 0)

    def poll(self, timeout_ms: int) -> dict[Partition, list[Any]]:
        if self.broker.fail_polls:
            raise self.broker.fail_polls.pop(0)
        out: dict[Partition, list[Any]] = {}
        for tp, position in self.fetch_positions.items():
            if tp in self._paused:
                continue
            records = self.broker.logs.get(tp, [])[position:position + self.max_poll_records]
            if records:
                out[tp] = list(records)
                self.fetch_positions[tp] = records[-1].offset + 1
        if not out:
            time.sleep(min(timeout_ms, 5) / 1000)
        return out

    def pause(self, tp: Partition) -> None:
        self._paused.add(tp)

    def resume(self, tp: Partition) -> None:
        self._paused.discard(tp)

    def paused(self) -> set[Partition]:
        return set(self._paused)

    def seek(self, tp: Partition, offset: int) -> None:
        self.fetch_positions[tp] = offset

    def commit(self, tp: Partition, next_offset: int) -> None:
        if self.broker.fail_commits:
            raise self.broker.fail_commits.pop(0)
        self.broker.committed[(self.group_id, tp)] = next_offset

    def assignment(self) -> set[Partition]:
        return set(self.fetch_positions)

    def end_offsets(self, tps: list[Partition]) -> dict[Partition, int]:
        return {tp: len(self.broker.logs.get(tp, [])) for tp in tps}

    def positions(self, tps: list[Partition]) -> dict[Partition, int]:
        return {tp: self.fetch_positions[tp] for tp in tps}

    def in_stable_group(self) -> bool | None:
        return True

    def fetch_state(self, tp: Partition) -> dict[str, Any]:
        return {"paused": tp in self._paused}

    def send(self, record: OutRecord, timeout_s: float = 30.0) -> None:
        if self.broker.fail_sends > 0:
            self.broker.fail_sends -= 1
            raise TimeoutError(f"stub broker: no acknowledgement for {record.topic}")
        self.broker.produce(record.topic, record.value, record.key, record.headers)

    def close(self) -> None:
        self.closed = True
