"""What to do with an event that failed: the whole retry / dead-letter policy, in one pure function.

- Fatal (reconnect needed): stop consuming; commit nothing.
- Permanent (bad event, missing mapping, QBO validation Fault): dead-letter now.
- An outage (the breaker of consumer.outage is open: record after record failing alike, not for their own
  sake): wait in place and probe, never forward; the consumer stops when it outlasts the breaker's limit.
- State database unavailable: back off in place until it is back (never forwarded, never dead-lettered).
- Dependency not ready (a payment before its invoice): straight to the retry topics, each wait about a fifth as
  long as it has waited so far, up to ``dependency_wait_max_s`` since it first failed: in a backfill through QBO's
  rate limit the invoice may be hours of work away, and that is no reason to dead-letter its payment.
- Retryable: back off in place a few times (a 429 waits its Retry-After), then forward to the retry topics
  with growing delays (the main topic keeps flowing), then dead-letter when the last tier fails too. Unless the
  failure is not tied to the record (network, 5xx, throttling, token endpoint, an unclassified exception): that
  is never a reason to dead-letter, so such a record keeps waiting in the last retry topic.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from consumer.errors import DependencyNotReady, FatalError, PermanentError, QboThrottled, StateUnavailable
from consumer.outage import tied_to_record
from schemas.backoff import compute_backoff


class StepKind(enum.Enum):
    RETRY_IN_PLACE = "retry_in_place"
    RETRY_TOPIC = "retry_topic"
    DEAD_LETTER = "dead_letter"
    STOP = "stop"


@dataclass(frozen=True)
class Step:
    kind: StepKind
    delay_s: float = 0.0
    tier: int = 0
    reason: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    inplace_attempts: int = 3
    throttle_inplace_attempts: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 10.0
    max_throttle_wait_s: float = 120.0
    topic_delays_s: tuple[int, ...] = (10, 60, 300)
    dependency_wait_max_s: float = 6 * 3600.0
    dependency_wait_share: float = 0.2  # of the time a dependency has waited so far: its next wait (see below)
    outage_probe_max_s: float = 30.0

    def next_step(self, error: BaseException, attempt: int, tier: int | None,
                  rng: random.Random | None = None, failing_for_s: float = 0.0, outage: bool = False) -> Step:
        """``attempt``: failures so far for this record in this consumer (1 = first); ``tier``: the retry
        tier the record came from (None = the main topic); ``failing_for_s``: since its first failure;
        ``outage``: the consumer's breaker is open (consumer.outage)."""
        if isinstance(error, FatalError):
            return Step(StepKind.STOP, reason=str(error))
        if isinstance(error, PermanentError):
            return Step(StepKind.DEAD_LETTER, reason=str(error))
        if outage and not tied_to_record(error):
            return Step(StepKind.RETRY_IN_PLACE, compute_backoff(attempt, self.backoff_base_s,
                                                                 self.outage_probe_max_s, rng),
                        reason=f"paused: records keep failing alike ({type(error).__name__})")
        if isinstance(error, StateUnavailable):
            # Our own database is down: every record would fail alike, so forwarding them to retry topics (and
            # at last to the dead-letter topic) would only shuffle the whole stream. Wait for it, for as long as
            # it takes; the partition resumes where it stopped.
            return Step(StepKind.RETRY_IN_PLACE, compute_backoff(attempt, self.backoff_base_s, self.backoff_max_s,
                                                                 rng))
        if isinstance(error, DependencyNotReady):
            return self._wait_for_dependency(error, failing_for_s)
        if isinstance(error, QboThrottled):
            if attempt <= self.throttle_inplace_attempts:
                return Step(StepKind.RETRY_IN_PLACE, min(error.retry_after_s, self.max_throttle_wait_s))
        elif attempt <= self.inplace_attempts:
            return Step(StepKind.RETRY_IN_PLACE, compute_backoff(attempt, self.backoff_base_s,
                                                                  self.backoff_max_s, rng))
        next_tier = 0 if tier is None else tier + 1
        if next_tier < len(self.topic_delays_s):
            return Step(StepKind.RETRY_TOPIC, float(self.topic_delays_s[next_tier]), next_tier)
        if not tied_to_record(error):
            last = len(self.topic_delays_s) - 1
            if last >= 0:
                return Step(StepKind.RETRY_TOPIC, float(self.topic_delays_s[last]), last,
                            reason=f"not tied to the record, so never dead-lettered: {error}")
            return Step(StepKind.RETRY_IN_PLACE, compute_backoff(attempt, self.backoff_base_s,
                                                                 self.outage_probe_max_s, rng))
        return Step(StepKind.DEAD_LETTER, reason=f"retries exhausted: {error}")

    def _wait_for_dependency(self, error: DependencyNotReady, failing_for_s: float) -> Step:
        """What a dependency waits for (an invoice on another partition, an earlier version in a retry topic) is
        processed by this same consumer: waiting in place would only hold it up, so straight to the topics. It is
        usually queued behind other work, not absent: the record waits about a fifth as long again as it has
        waited so far (the shortest tier first), so it follows soon after what it waits for, and a wait of hours
        costs about a hundred round trips. Climbing a tier per attempt made a payment wait 5 minutes for an invoice
        that was written 70 s after it; half as long again still sent the payments of a 2.5-minute backfill, which
        had waited two minutes for their invoices, to the 60 s tier just before the invoices came: the drain then
        idled 45 s on them (the backfill benchmark's tail, one run in two)."""
        if not self.topic_delays_s or failing_for_s >= self.dependency_wait_max_s:
            return Step(StepKind.DEAD_LETTER, reason=f"dependency not ready after {failing_for_s:.0f}s: {error}")
        fits = max(failing_for_s * self.dependency_wait_share, self.topic_delays_s[0])
        tier = max(i for i, delay in enumerate(self.topic_delays_s) if delay <= fits)
        return Step(StepKind.RETRY_TOPIC, float(self.topic_delays_s[tier]), tier,
                    reason=f"waiting for its dependency ({failing_for_s:.0f}s so far)" if failing_for_s else "")

