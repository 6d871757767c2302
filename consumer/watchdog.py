"""Two watchdogs of the consumer loop, for ways a Kafka client can stop making progress without an error: it never
joins a stable group, or it stops fetching partitions that hold records. Each ends in ``ConsumerStuck``: the
process exits and its supervisor starts a fresh member, which reads from the committed offsets (nothing lost)."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from consumer.errors import ConsumerStuck
from consumer.kafka_port import BrokerUnavailable, ConsumerPort, Partition

log = structlog.get_logger("ttsync.consumer")

IDLE_REFETCH_S = 15.0


class GroupWatchdog:
    """kafka-python can spin for ever looking for a group coordinator it never finds (dpkp/kafka-python #1493,
    #2373). A member that stays out of a stable group that long exits for its supervisor to replace it. A stable
    member without partitions (more members than partitions) is fine. ``exit_after_s`` 0: never.

    Not while the broker is away (``broker_answers`` says so): no member joins a group then, a fresh one no more
    than this one, and the consumer waits the outage out in place."""

    def __init__(self, port: ConsumerPort, group_id: str, exit_after_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 broker_answers: Callable[[], bool] | None = None) -> None:
        self.port = port
        self.group_id = group_id
        self.exit_after_s = exit_after_s
        self.clock = clock
        self.broker_answers = broker_answers
        self._unjoined_since: float | None = None

    def check(self) -> None:
        stable = self.port.in_stable_group()
        if stable is None or stable:
            self._unjoined_since = None
            return
        now = self.clock()
        if self._unjoined_since is None:
            self._unjoined_since = now
        elif self.exit_after_s and now - self._unjoined_since > self.exit_after_s:
            if self.broker_answers is not None and not self.broker_answers():
                log.warning("group_waits_for_broker", group=self.group_id,
                            unjoined_s=round(now - self._unjoined_since))
                self._unjoined_since = now
                return
            raise ConsumerStuck(f"not in a stable consumer group for {now - self._unjoined_since:.0f}s "
                                f"(group {self.group_id}): exiting for a supervisor to restart the consumer")


class FetchWatchdog:
    """A watchdog for partitions that hold records but are not fetched.

    The one cause found (``kafka_port.release_parked_records``) is worked around; this is the net under
    it, for any other way a client library can stop fetching a partition. After a quiet spell the consumer asks
    the broker for the log-end offsets of what it owns; a partition behind its end that is not deliberately paused
    is re-pointed at its own position (resets its fetch state). If the same partitions are still behind and
    unmoved at the next quiet check, the consumer exits for its supervisor to restart it."""

    def __init__(self, port: ConsumerPort, clock: Callable[[], float] = time.monotonic,
                 quiet_s: float = IDLE_REFETCH_S) -> None:
        self.port = port
        self.clock = clock
        self.quiet_s = quiet_s
        self.last_records_at = clock()
        self.stuck: dict[Partition, int] = {}

    def after_poll(self, got_records: bool, paused_on_purpose: set[Partition]) -> None:
        now = self.clock()
        if got_records:
            self.last_records_at = now
            self.stuck = {}
            return
        if now - self.last_records_at < self.quiet_s:
            return
        self.last_records_at = now
        waiting = [tp for tp in self.port.assignment() if tp not in paused_on_purpose]
        if not waiting:
            return
        try:
            ends = self.port.end_offsets(waiting)
            positions = {tp: self.port.position(tp) for tp in waiting}
        except BrokerUnavailable as exc:  # nothing to judge now, the next quiet check tries again
            log.info("partitions_check_skipped", error=str(exc))
            return
        behind = {tp: positions[tp] for tp in waiting if tp in ends and ends[tp] > positions[tp]}
        if not behind:
            self.stuck = {}
            return
        again = [tp for tp, pos in behind.items() if self.stuck.get(tp) == pos]
        log.warning("partitions_not_fetched", action="exit" if again else "refetch",
                    partitions={f"{tp.topic}[{tp.partition}]": {"position": pos, "end": ends[tp],
                                                                  "fetch_state": self.port.fetch_state(tp)}
                                for tp, pos in behind.items()})
        if again:
            raise ConsumerStuck(f"{len(again)} partition(s) hold records but were not fetched after a refetch "
                                f"(e.g. {again[0].topic}[{again[0].partition}]): exiting for a supervisor to "
                                "restart the consumer")
        self.stuck = dict(behind)
        paused = self.port.paused()
        for tp, pos in behind.items():
            if tp in paused:
                self.port.resume(tp)
            self.port.seek(tp, pos)
