"""The one table of the fault-injection suite: a row per scenario, printed at the end of the run (the hook is
in tests/conftest.py) and written as JSON."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tests.chaos.invariant import Verdict

ROWS: list[dict[str, Any]] = []
REPORT = Path(os.environ.get("TTSYNC_CHAOS_REPORT", Path(__file__).resolve().parents[2] / ".local" / "chaos.json"))


def record(scenario: str, verdict: Verdict, seconds: float, notes: str = "", restarts: int | None = None) -> None:
    """``restarts``: how often the supervisor had to start a process that exited on its own (not one a fault
    killed): an outage is to be waited out in place."""
    ROWS.append({"scenario": scenario, "changes": verdict.changes, "aggregates": verdict.aggregates,
                 "applied": verdict.applied, "dead_lettered": verdict.dead_lettered + verdict.junk_dead_lettered,
                 "lost": verdict.lost, "duplicated": verdict.duplicated, "restarts": restarts,
                 "seconds": round(seconds, 1), "notes": notes})


def table(rows: list[dict[str, Any]]) -> list[str]:
    head = ["scenario", "changes", "applied", "dead-lettered", "lost", "duplicated", "restarts", "time", "notes"]
    body = [[r["scenario"], str(r["changes"]), str(r["applied"]), str(r["dead_lettered"]), str(r["lost"]),
             str(r["duplicated"]), "-" if r.get("restarts") is None else str(r["restarts"]), f"{r['seconds']:.0f}s",
             r["notes"]] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]
    fmt = "  ".join(f"{{:{'<' if i in (0, 8) else '>'}{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in body]


def terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    terminalreporter.section("ttsync chaos: the invariant after each fault")
    for line in table(ROWS):
        terminalreporter.write_line(line)
    terminalreporter.write_line("applied = aggregates live in QBO exactly once at their latest version; dead-lettered "
                                "= refused records (poison, injected garbage) in the DLQ with their reason; "
                                "restarts = processes the supervisor started again after they exited on their own")
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": ROWS},
                                 indent=2) + "\n")
    terminalreporter.write_line(f"written to {REPORT}")
