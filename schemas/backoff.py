"""Exponential backoff with jitter, for every loop that waits on a service (relay, consumer forwards, the retry
policy): pure, held once. In ``schemas`` because both runtimes use it and depend only on this package."""

from __future__ import annotations

import random
from dataclasses import dataclass

_RANDOM = random.Random()


def compute_backoff(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None,
                    jitter: float = 0.2) -> float:
    """Exponential backoff with +-``jitter`` spread, so processes that failed together do not retry together."""
    delay = min(max_s, base_s * 2.0 ** max(attempt - 1, 0))
    spread = (rng or _RANDOM).uniform(-jitter, jitter)
    return max(0.0, delay * (1 + spread))


@dataclass
class Backoff:
    """The delays of one run of failures: ``next()`` after each, ``reset()`` after a success."""

    base_s: float = 0.5
    max_s: float = 10.0
    attempt: int = 0

    def next(self) -> float:
        self.attempt += 1
        return compute_backoff(self.attempt, self.base_s, self.max_s)

    def reset(self) -> None:
        self.attempt = 0
