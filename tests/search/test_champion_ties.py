"""Ties are ties in the sweep's choice: val mIoU differences at or below
registry.min_improvement are ties that the lower batch-1 latency wins; the leaderboard puts
the champion first; the setting is checked when the experiment file is read."""

from __future__ import annotations

import pytest

from petloc.config import load_experiment
from petloc.errors import PetlocError
from petloc.search.state import fingerprint
from petloc.search.sweep import champion_row, ranked_rows
from tests.helpers import tiny_dataset, tiny_experiment

ROWS = [  # as MLflow returns them, best val mIoU first
    {"trial": "2", "best_val_miou": 0.5496, "latency_ms_b1": 6.2, "run_id": "slow"},
    {"trial": "0", "best_val_miou": 0.5491, "latency_ms_b1": 3.1, "run_id": "fast"},
    {"trial": "1", "best_val_miou": 0.5300, "latency_ms_b1": 1.0, "run_id": "fastest"},
    {"trial": "3", "best_val_miou": 0.5250, "latency_ms_b1": 2.0, "run_id": "worst"},
]


def run_ids(rows):
    return [row["run_id"] for row in rows]


def test_a_tie_goes_to_the_faster_trial_and_it_leads_the_leaderboard():
    # 0.5496 and 0.5491 tie within 0.01: the faster leads; 0.5300 is 0.0196 below the best
    assert champion_row(ROWS, None, 0.01)["run_id"] == "fast"
    assert run_ids(ranked_rows(ROWS, 0.01)) == ["fast", "slow", "fastest", "worst"]


def test_a_bigger_difference_is_not_a_tie():
    assert champion_row(ROWS, None, 0.0001)["run_id"] == "slow"
    assert run_ids(ranked_rows(ROWS, 0.0)) == ["slow", "fast", "fastest", "worst"]
    # within 0.03 all four tie with the best (0.5250 is 0.0246 below it): the fastest first
    assert run_ids(ranked_rows(ROWS, 0.03)) == ["fastest", "worst", "fast", "slow"]


def test_ties_do_not_chain():
    # "third" and "late" tie with "second" (0.006, 0.009 below it) but not with the best
    # (0.011, 0.014 below it): after the ties with the best, the rows go by val mIoU, and a
    # faster row 0.014 below the best never ranks above a slower one 0.005 below it
    rows = [
        {"best_val_miou": 0.600, "latency_ms_b1": 1.0, "run_id": "best"},
        {"best_val_miou": 0.595, "latency_ms_b1": 10.0, "run_id": "second"},
        {"best_val_miou": 0.586, "latency_ms_b1": 5.0, "run_id": "late"},
        {"best_val_miou": 0.589, "latency_ms_b1": 0.5, "run_id": "third"},
    ]
    assert run_ids(ranked_rows(rows, 0.01)) == ["best", "second", "third", "late"]


def test_a_difference_of_exactly_min_improvement_is_a_tie():
    rows = [
        {"best_val_miou": 0.5591, "latency_ms_b1": 6.2, "run_id": "a"},
        {"best_val_miou": 0.5491, "latency_ms_b1": 3.1, "run_id": "b"},
    ]
    assert champion_row(rows, None, 0.01)["run_id"] == "b"


def test_under_a_latency_budget_the_tie_is_among_the_trials_that_fit():
    assert champion_row(ROWS, 5.0, 0.01)["run_id"] == "fast"
    assert champion_row(ROWS, 2.5, 0.01)["run_id"] == "fastest"  # 0.5300 and 0.5250 tie


def test_rows_without_a_figure_come_last():
    rows = [{"best_val_miou": "", "latency_ms_b1": "", "run_id": "x"}, *ROWS]
    assert run_ids(ranked_rows(rows, 0.01))[-1] == "x"
    no_latency = [{"best_val_miou": 0.5496, "latency_ms_b1": "", "run_id": "unknown"}, ROWS[1]]
    assert champion_row(no_latency, None, 0.01)["run_id"] == "fast"


@pytest.mark.parametrize(
    "value, message",
    [
        ("-0.01", "registry.min_improvement: Input should be greater than or equal to 0"),
        (".nan", "registry.min_improvement: Input should be a finite number"),
        ("much", "registry.min_improvement: Input should be a valid number"),
    ],
)
def test_min_improvement_is_checked_when_the_file_is_read(tmp_path, value, message):
    exp = tiny_experiment(tmp_path, tmp_path)
    with pytest.raises(PetlocError, match=message) as err:
        load_experiment(exp, [f"registry.min_improvement={value}"])
    assert "\n" not in str(err.value)


def test_a_sweep_started_before_the_setting_still_resumes(tmp_path):
    # the registry section is outside the fingerprint: changing it continues the same sweep
    exp = tiny_experiment(tmp_path, tiny_dataset(tmp_path / "photos", count=4))
    assert load_experiment(exp).registry.min_improvement == 0.01
    assert fingerprint(load_experiment(exp)) == fingerprint(
        load_experiment(exp, ["registry.min_improvement=0.05"])
    )
