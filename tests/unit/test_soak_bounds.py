"""The soak's own bounds (tests/chaos/soak.py): a check that is wrong fails a sound pipeline, or passes a leak."""

from __future__ import annotations

from tests.chaos.soak import OUTBOX_RETENTION_H, PURGE_SLACK_S, purge_bound_s

USUAL = OUTBOX_RETENTION_H * 3600 + PURGE_SLACK_S


def test_without_a_database_outage_a_published_row_may_outlive_its_retention_by_the_purge_slack_only() -> None:
    assert purge_bound_s(10_000.0, []) == USUAL
    assert purge_bound_s(10_000.0, [(1_000.0, 1_150.0)]) == USUAL  # long over: no excuse any more


def test_a_database_outage_that_just_ended_widens_the_bound_by_its_length() -> None:
    # Seed 1203: 15 s after a 150 s outage, 3,314 rows were past retention + slack; the relay had had no database
    # to purge. They went at its next round.
    assert purge_bound_s(2_165.0, [(2_000.0, 2_150.0)]) == USUAL + 150


def test_an_outage_that_overlaps_the_rows_coming_of_age_counts_whole_and_one_before_it_not_at_all() -> None:
    now = 5_000.0
    straddling = (now - PURGE_SLACK_S - 30, now - PURGE_SLACK_S + 30)  # the purge missed rounds for all 60 s
    assert purge_bound_s(now, [straddling]) == USUAL + 60
    before = (now - PURGE_SLACK_S - 100, now - PURGE_SLACK_S - 40)  # the purge has had its slack since
    assert purge_bound_s(now, [before]) == USUAL


def test_an_outage_under_way_counts_up_to_now() -> None:
    assert purge_bound_s(3_030.0, [(3_000.0, None)]) == USUAL + 30
