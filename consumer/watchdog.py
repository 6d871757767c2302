"""Two watchdogs of the consumer loop, for ways a Kafka client can stop making progress without an error: it never
joins a stable group, or it stops fetching partitions that hold records. Each ends in ``MemberStuck``: the loop
replaces the member with a fresh one in place, which reads from the committed offsets (nothing lost), as a
supervisor's restart would, without one. ``RenewalBudget`` says when renewing has failed often enough that the
process exits after all (``ConsumerStuck``) for its supervisor."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

import structlog

from consumer.errors import ConsumerStuck, MemberStuck
from consumer.kafka_port import BrokerUnavailable, ConsumerPort, Partition

log = structlog.get_logger("ttsync.consumer")

IDLE_REFETCH_S = 15.0
# How soon after the broker's return, or a lost assignment, the partitions are judged (FetchWatchdog.judge_soon).
AFTER_DISRUPTION_S = 5.0
# A member replaced this often within the window is not helped by another: the process exits for its supervisor.
RENEWALS_MAX = 3
RENEWAL_WINDOW_S = 600.0


class RenewalBudget:
    """How often the loop may replace a stuck member in place before it gives up and exits."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, most: int = RENEWALS_MAX,
                 window_s: float = RENEWAL_WINDOW_S) -> None:
        self.clock = clock
        self.most = most
        self.window_s = window_s
        self._at: list[float] = []

    def spend(self, why: MemberStuck) -> int:
        """Count one renewal and return how many the window holds, or raise ``ConsumerStuck`` when spent."""
        now = self.clock()
        self._at = [t for t in self._at if now - t < self.window_s]
        if len(self._at) >= self.most:
            raise ConsumerStuck(f"{why} - and the member was already replaced {len(self._at)} times in "
                                f"{self.window_s / 60:.0f} min: exiting for a supervisor to restart the consumer")
        self._at.append(now)
        return len(self._at)


class GroupWatchdog:
    """kafka-python can spin for ever looking for a group coordinator it never finds (dpkp/kafka-python #1493,
    #2373). A member that stays out of a stable group that long exits for its supervisor to replace it. A stable
    member without partitions (more members than partitions) is fine. ``exit_after_s`` 0: never (a fresh member
    after that long, ``MemberStuck``).

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
            raise MemberStuck(f"not in a stable consumer group for {now - self._unjoined_since:.0f}s "
                              f"(group {self.group_id})")

    def reset(self) -> None:
        """A fresh member: its own time to join."""
        self._unjoined_since = None


class FetchWatchdog:
    """A watchdog for partitions that hold records but are not fetched.

    The one cause found in kafka-python (``kafka_port.release_parked_records``) is worked around; this is the net
    under it, for any other way a client library can stop fetching a partition. librdkafka was seen to leave a
    member's partitions unfetched after an 8 s broker restart (assigned, not paused, position 0 of 21 and 36) while
    its other partitions delivered: judged only once the whole consumer was quiet, they waited two minutes in a
    chaos run, and under steady traffic elsewhere they would have waited for ever. So each partition is judged on
    its own, at a poll that came back empty (the client had nothing buffered to hand out) at most every
    ``quiet_s``: one behind its log end whose position has not moved since the previous such check gets a strike,
    at the second it is re-pointed at its own position (resets its fetch state), at the third the member is stuck
    (``MemberStuck``). After a spell with no records at all the first strike counts two (a consumer entirely
    quiet with records waiting is already suspect: kafka-python after a rejoin, which a refetch fixes). A
    consumer busy with a backlog never polls empty, so a partition waiting its turn behind others' records is
    never judged; a partition that delivers records loses its strikes."""

    def __init__(self, port: ConsumerPort, clock: Callable[[], float] = time.monotonic,
                 quiet_s: float = IDLE_REFETCH_S) -> None:
        self.port = port
        self.clock = clock
        self.quiet_s = quiet_s
        self.last_check_at = clock()
        self.strikes: dict[Partition, tuple[int, int]] = {}  # partition -> (its unmoved position, strikes)
        self._quiet = True  # no records at all since the last check, or since the member started

    def after_poll(self, fetched: Collection[Partition], paused_on_purpose: set[Partition]) -> None:
        """``fetched``: the partitions this poll brought records of."""
        for tp in fetched:
            self.strikes.pop(tp, None)
        if fetched:
            self._quiet = False
        now = self.clock()
        if fetched or now - self.last_check_at < self.quiet_s:
            return
        self.last_check_at = now
        first_strike = 2 if self._quiet else 1
        self._quiet = True
        waiting = [tp for tp in self.port.assignment() if tp not in paused_on_purpose]
        if not waiting:
            self.strikes = {}
            return
        try:
            ends = self.port.end_offsets(waiting)
            positions = self.port.positions(waiting)
        except BrokerUnavailable as exc:  # nothing to judge now, the next quiet check tries again
            log.info("partitions_check_skipped", error=str(exc))
            return
        behind = {tp: positions[tp] for tp in waiting if tp in ends and tp in positions and ends[tp] > positions[tp]}
        strikes: dict[Partition, tuple[int, int]] = {}
        for tp, pos in behind.items():
            before, count = self.strikes.get(tp, (None, 0))
            strikes[tp] = (pos, count + 1 if before == pos else first_strike)  # moved: it starts over
        self.strikes = strikes
        judged = {tp: pos for tp, (pos, n) in self.strikes.items() if n >= 2}
        if not judged:
            return
        again = [tp for tp in judged if self.strikes[tp][1] >= 3]
        log.warning("partitions_not_fetched", action="renew_member" if again else "refetch",
                    partitions={f"{tp.topic}[{tp.partition}]": {"position": pos, "end": ends[tp],
                                                                  "fetch_state": self.port.fetch_state(tp)}
                                for tp, pos in judged.items()})
        if again:
            raise MemberStuck(f"{len(again)} partition(s) hold records but were not fetched after a refetch "
                              f"(e.g. {again[0].topic}[{again[0].partition}])")
        paused = self.port.paused()
        for tp, pos in judged.items():
            if tp in paused:
                self.port.resume(tp)
            self.port.seek(tp, pos)

    def judge_soon(self, after_s: float = AFTER_DISRUPTION_S) -> None:
        """The broker was away, or the member lost its partitions: the next check comes ``after_s`` from now (from
        the last such call), judged as after a quiet spell unless records come first. kafka-python left partitions
        unfetched after a broker restart's rejoin, and the consumer idled the whole ``quiet_s`` before the check
        re-pointed them (the chaos suite's broker restart: partitions lost at 09:36:05, refetched at 09:36:20)."""
        self.last_check_at = self.clock() - self.quiet_s + after_s
        self._quiet = True

    def reset(self) -> None:
        """A fresh member: a quiet spell of its own before it is judged."""
        self.last_check_at = self.clock()
        self.strikes = {}
        self._quiet = True
