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


def record(scenario: str, verdict: Verdict, seconds: float, notes: str = "", restarts: int | None = None, *,
           storage: str, brokers: int, played_s: float | None = None) -> None:
    """``restarts``: how often the supervisor had to start a process that exited on its own (not one a fault
    killed): an outage is to be waited out in place. ``storage``: the PostgreSQL cluster's durability as it
    reported it (harness.storage_of); ``brokers``: the Kafka cluster's size as it reported it. ``played_s``: of
    ``seconds``, until the workload's last commit; the rest is the pipeline catching up, and the checks."""
    ROWS.append({"scenario": scenario, "storage": storage, "brokers": brokers, "changes": verdict.changes,
                 "aggregates": verdict.aggregates,
                 "applied": verdict.applied, "dead_lettered": verdict.dead_lettered + verdict.junk_dead_lettered,
                 "lost": verdict.lost, "duplicated": verdict.duplicated, "restarts": restarts,
                 "seconds": round(seconds, 1), "played_s": None if played_s is None else round(played_s, 1),
                 "notes": notes})


def _time(row: dict[str, Any], unit: str = "s") -> str:
    played = row.get("played_s")
    return f"{row['seconds']:.0f}{unit}" + ("" if played is None else f" ({played:.0f}{unit} play)")


def table(rows: list[dict[str, Any]]) -> list[str]:
    head = ["scenario", "storage", "brokers", "changes", "applied", "dead-lettered", "lost", "duplicated", "restarts",
            "time", "notes"]
    body = [[r["scenario"], r["storage"], str(r["brokers"]), str(r["changes"]), str(r["applied"]),
             str(r["dead_lettered"]), str(r["lost"]), str(r["duplicated"]),
             "-" if r.get("restarts") is None else str(r["restarts"]), _time(r), r["notes"]]
            for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]
    fmt = "  ".join(f"{{:{'<' if i in (0, 1, 10) else '>'}{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in body]


def terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    terminalreporter.section("ttsync chaos: the invariant after each fault")
    for line in table(ROWS):
        terminalreporter.write_line(line)
    terminalreporter.write_line("applied = aggregates live in QBO exactly once at their latest version; dead-lettered "
                                "= refused records (poison, injected garbage) in the DLQ with their reason; "
                                "restarts = processes the supervisor started again after they exited on their own; "
                                "storage = durable when PostgreSQL ran with fsync, synchronous_commit and "
                                "full_page_writes on; brokers = Kafka nodes in the cluster")
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": ROWS},
                                 indent=2) + "\n")
    terminalreporter.write_line(f"written to {REPORT}")


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The table as the README shows it."""
    out = ["| scenario | storage, brokers | changes | applied | dead-lettered | lost | duplicated | restarts | time "
           "| notes |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        where = f"{r['storage']} PostgreSQL, {r['brokers']} broker{'s' if r['brokers'] != 1 else ''}"
        restarts = "-" if r.get("restarts") is None else str(r["restarts"])
        out.append(f"| {r['scenario']} | {where} | {r['changes']:,} | {r['applied']:,} | {r['dead_lettered']} | "
                   f"**{r['lost']}** | **{r['duplicated']}** | {restarts} | {_time(r, ' s')} | {r['notes']} |")
    return out


if __name__ == "__main__":
    # python3 -m tests.chaos.report [.local/chaos.json]: the last run's table in the README's markdown.
    import sys

    source = Path(sys.argv[1]) if len(sys.argv) > 1 else REPORT
    print("\n".join(markdown(json.loads(source.read_text())["rows"])))
