"""A worker started while its database or broker is away waits for it, in place, instead of exiting.

#21: once running, relay and consumer ride out outages of minutes; started during one (a supervisor restarting a
process, a host booting before PostgreSQL), they exited with code 4 at once, and a supervisor started them again
and again (78 restarts in one 150 s PostgreSQL outage of the soak). The long-running commands now retry their
start-up for ``TTSYNC_STARTUP_WAIT_S``; the one-shot forms (``relay --once``, ``consume --max-seconds``) keep
failing at once, as a script expects of them. Only "a service does not answer" (exit 4) is waited for: a wrong
setting or an unmigrated database fails at once either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import structlog

from schemas.backoff import Backoff
from ttsync.failures import EXIT_UNAVAILABLE, describe

T = TypeVar("T")

log = structlog.get_logger("ttsync.startup")


def wait_for_services(start: Callable[[], T], *, budget_s: float, what: str, services: dict[str, str] | None = None,
                      sleep: Callable[[float], None] = time.sleep,
                      clock: Callable[[], float] = time.monotonic) -> T:
    """``start()``, again with backoff while it fails because a service does not answer, for up to ``budget_s``
    seconds; then its failure goes up as it would have at once. ``start`` must be safe to run again.
    ``services``: where the worker looks (``describe``'s ``database`` and ``kafka``, password hidden)."""
    backoff = Backoff(base_s=1.0, max_s=15.0)
    deadline = clock() + budget_s
    while True:
        try:
            return start()
        except Exception as exc:
            left = deadline - clock()
            failure = describe(exc, **(services or {}))
            if failure.code != EXIT_UNAVAILABLE or left <= 0:
                raise
            delay = min(backoff.next(), left)
            log.warning("waiting_for_service", worker=what, error=failure.message, attempt=backoff.attempt,
                        retry_in_s=round(delay, 1), gives_up_in_s=round(left))
            sleep(delay)
