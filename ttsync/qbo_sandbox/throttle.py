"""QBO's per-realm limits: requests per minute, concurrent requests, batch requests per minute."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field


@dataclass
class RealmCounters:
    window: deque[float] = field(default_factory=deque)
    batch_window: deque[float] = field(default_factory=deque)
    in_flight: int = 0


class Throttle:
    def __init__(self, per_minute: int = 500, concurrent: int = 10, batch_per_minute: int = 40,
                 enabled: bool = True) -> None:
        self.per_minute = per_minute
        self.concurrent = concurrent
        self.batch_per_minute = batch_per_minute
        self.enabled = enabled
        self._realms: dict[str, RealmCounters] = {}
        self._lock = threading.Lock()
        self.throttled = 0

    def enter(self, realm: str, *, batch: bool) -> bool:
        """Admit a request (and count it) or refuse it; a refused request is not counted, as with QBO."""
        now = time.monotonic()
        with self._lock:
            c = self._realms.setdefault(realm, RealmCounters())
            while c.window and now - c.window[0] >= 60:
                c.window.popleft()
            while c.batch_window and now - c.batch_window[0] >= 60:
                c.batch_window.popleft()
            if self.enabled and (
                len(c.window) >= self.per_minute
                or c.in_flight >= self.concurrent
                or (batch and len(c.batch_window) >= self.batch_per_minute)
            ):
                self.throttled += 1
                return False
            c.window.append(now)
            if batch:
                c.batch_window.append(now)
            c.in_flight += 1
            return True

    def leave(self, realm: str) -> None:
        with self._lock:
            self._realms[realm].in_flight -= 1

    def used_last_minute(self, realm: str) -> int:
        now = time.monotonic()
        with self._lock:
            c = self._realms.get(realm)
            return 0 if c is None else sum(1 for t in c.window if now - t < 60)

    def reset(self) -> None:
        with self._lock:
            self._realms.clear()
            self.throttled = 0
