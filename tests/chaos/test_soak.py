"""Three minutes of the soak (tests/chaos/soak.py) in the suite: overlapping faults from a fixed seed, then the
invariant, memory within 20% of the first minute's peak, the outbox within its retention. The half-hour soak
is a script: ``python3 -m tests.chaos.soak``."""

from __future__ import annotations

import pytest

from tests.chaos.report import ROWS, record
from tests.chaos.soak import soak, summary

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.slow]

SEED = 2112


def test_a_three_minute_soak_with_overlapping_faults() -> None:
    report = soak(minutes=3, changes=6000, seed=SEED, warmup_minutes=1, mean_gap_s=12, settle_minutes=10)
    faults = sorted({s["fault"] for s in report.strikes})
    record(f"soak 3 min, seed {SEED}", report.verdict, report.seconds,
           f"{len(report.strikes)} overlapping strikes: {', '.join(faults)}", report.restarts,
           storage=report.storage, brokers=report.brokers)
    ROWS[-1]["notes"] += "; " + "; ".join(f"{role} RSS end {rss['end_kb'] // 1024} MiB" for role, rss in
                                          report.rss.items())
    assert report.ok, summary(report)
    assert len(faults) >= 4, f"the seed gave too few kinds of fault to prove much: {faults}"
