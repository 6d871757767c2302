"""Named points where the crash tests kill the consumer (after a QBO write, before an offset commit). The hook is
injected (``EventApplier``, ``GroupConsumer``); only the wiring reads ``TTSYNC_TEST_CRASH_AT`` /
``TTSYNC_TEST_CRASH_AFTER``, and production never sets them."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping

CrashHook = Callable[[str], None]


def no_crash(_point: str) -> None:
    """The production hook: nothing happens at a crash point."""


class CrashAt:
    """SIGKILL this process the ``after``-th time it reaches ``point``: no cleanup, as a power cut."""

    def __init__(self, point: str, after: int = 1) -> None:
        self.point = point
        self.countdown = after

    def __call__(self, point: str) -> None:
        if point != self.point:
            return
        self.countdown -= 1
        if self.countdown <= 0:
            os.kill(os.getpid(), signal.SIGKILL)


def crash_hook_from_env(env: Mapping[str, str]) -> CrashHook:
    point = env.get("TTSYNC_TEST_CRASH_AT", "")
    return CrashAt(point, int(env.get("TTSYNC_TEST_CRASH_AFTER", "1"))) if point else no_crash
