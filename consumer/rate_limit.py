"""Stay under QBO's per-realm limit (500 requests/min): a token bucket shared by every consumer of the group.

The budget belongs to the company, not to a process, so with PostgreSQL as the state database the bucket
lives in a row (``ttsync_rate_budget``) that every consumer draws from under a row lock. With SQLite (the demo:
one consumer) it lives in memory. Rate and burst are chosen so that no 60-second window can exceed the limit:
``burst + rate * 60 <= limit``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import Engine, text

from consumer.state_db import autocommit


class RateLimiter(Protocol):
    def acquire(self) -> float:
        """Block until one request may be sent; returns the seconds waited."""
        ...

    def try_acquire(self) -> bool:
        """Take one request of the budget if one is free now; never waits."""
        ...


def bucket_parameters(requests_per_minute: int, fraction: float, burst: int) -> tuple[float, float]:
    """(rate per second, capacity) with ``capacity + 60 * rate <= requests_per_minute``."""
    rate = requests_per_minute * fraction / 60.0
    capacity = max(1.0, min(float(burst), requests_per_minute - rate * 60.0))
    return rate, capacity


class _Bucket:
    """``acquire`` and ``try_acquire`` over a bucket's ``_take``: take a token and return 0, or say how long until
    one is free."""

    waited_s = 0.0
    _sleep: Callable[[float], None] = staticmethod(time.sleep)

    def _take(self) -> float:
        raise NotImplementedError

    def acquire(self) -> float:
        waited = 0.0
        while True:
            delay = self._take()
            if delay == 0:
                self.waited_s += waited
                return waited
            self._sleep(delay)
            waited += delay

    def try_acquire(self) -> bool:
        return self._take() == 0


class LocalTokenBucket(_Bucket):
    def __init__(self, rate_per_s: float, capacity: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = rate_per_s
        self.capacity = capacity
        self.tokens = capacity
        self._clock, self._sleep = clock, sleep  # injected by tests: minutes of traffic in no time
        self.updated = clock()
        self._lock = threading.Lock()
        self.waited_s = 0.0

    def _take(self) -> float:
        """Take a token and return 0, or return how long until one is free."""
        with self._lock:
            now = self._clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1 - 1e-9:  # float dust must not make a full token wait for ever
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate


class SharedTokenBucket(_Bucket):
    """The same bucket in a PostgreSQL row, so N consumers together stay under the realm's limit."""

    def __init__(self, engine: Engine, realm_id: str, rate_per_s: float, capacity: float) -> None:
        self.engine = engine
        self.realm_id = realm_id
        self.rate = rate_per_s
        self.capacity = capacity
        self.waited_s = 0.0

    def _take(self) -> float:
        """Take a token and return 0, or return how long until one is free."""
        while True:
            now = time.time()  # wall clock: shared between processes
            params = {"r": self.realm_id, "cap": self.capacity, "rate": self.rate, "now": now}
            # Each statement commits on its own: the UPDATE refills and takes under the row's lock, so two consumers
            # never take the same token; the SELECT and the first INSERT need no transaction around them either.
            with autocommit(self.engine) as conn:
                # The common case is one statement: refill, and take a token if there is one.
                taken = conn.execute(text(
                    "UPDATE ttsync_rate_budget SET tokens = LEAST(:cap, tokens + GREATEST(0, :now - updated_at) "
                    "* :rate) - 1, updated_at = :now WHERE realm_id = :r AND LEAST(:cap, tokens + "
                    "GREATEST(0, :now - updated_at) * :rate) >= 1 RETURNING tokens"), params).first()
                if taken is not None:
                    return 0.0
                row = conn.execute(text("SELECT tokens, updated_at FROM ttsync_rate_budget WHERE realm_id = :r"),
                                   params).first()
                if row is None:
                    conn.execute(text("INSERT INTO ttsync_rate_budget (realm_id, tokens, updated_at) "
                                      "VALUES (:r, :cap, :now) ON CONFLICT (realm_id) DO NOTHING"), params)
                    continue
                tokens = min(self.capacity, row.tokens + max(0.0, now - row.updated_at) * self.rate)
            return max((1 - float(tokens)) / self.rate, 0.001)


def make_rate_limiter(engine: Engine, realm_id: str, requests_per_minute: int, fraction: float,
                      burst: int) -> LocalTokenBucket | SharedTokenBucket:
    rate, capacity = bucket_parameters(requests_per_minute, fraction, burst)
    if engine.dialect.name == "postgresql":
        return SharedTokenBucket(engine, realm_id, rate, capacity)
    return LocalTokenBucket(rate, capacity)
