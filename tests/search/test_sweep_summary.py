"""The lines `petloc sweep` ends with, from petloc.search.summary."""

from petloc.search.summary import sweep_summary
from petloc.search.sweep import SweepResult
from petloc.tracking.registry import Promotion
from petloc.tracking.ui_links import SweepLinks
from petloc.tracking.vocabulary import FINAL_TRIAL

ROWS = [
    {"trial": "0", "best_val_miou": 0.5, "run_id": "a"},
    {"trial": "1", "best_val_miou": 0.25, "run_id": "b"},
    {"trial": FINAL_TRIAL, "best_val_miou": 0.625, "run_id": "c"},
]


def test_the_summary_counts_the_trials_and_tells_where_the_model_is():
    promoted = Promotion("my pets", "3", True, "registered as version 3")
    lines = sweep_summary("tiny", SweepResult("p1", ROWS, promoted, 1), 61.4, "my pets@champion")
    assert lines[1] == "Leaderboard of sweep 'tiny' (2 finished, 1 failed, the final run, 61 s):"
    assert "run_id" not in lines[2] and len(lines[2].splitlines()) == 4  # header and three rows
    assert lines[3:] == [
        "",
        "registry: registered as version 3",
        "",
        "parent run p1; browse with: petloc ui",  # no links: the command that opens the UI
        "pull the model by name: petloc predict 'my pets@champion' photo.jpg  |  "
        "petloc evaluate 'my pets@champion' DATA",
        "from Python: petloc.load_model('my pets@champion').predict([image])",
    ]


def test_without_a_promotion_there_is_no_registry_line():
    lines = sweep_summary("tiny", SweepResult("p1", ROWS[:2], None, 0), 5, "petloc@champion")
    assert lines[1] == "Leaderboard of sweep 'tiny' (2 finished, 0 failed, 5 s):"
    assert not any(line.startswith("registry:") for line in lines)


def test_the_ui_is_named_once_and_not_at_all_on_a_server():
    """The links block says what opens its pages; the parent run's line does not repeat it,
    and on a tracking server (which serves the UI) no `petloc ui` is suggested."""
    urls = {"sweep (parent run)": "https://mlflow.example/#/experiments/7/runs/p1"}
    for links, opener in ((SweepLinks(urls), 0), (SweepLinks(urls, "petloc ui"), 1)):
        lines = sweep_summary("tiny", SweepResult("p1", ROWS, None, 0, links), 5, "petloc@champion")
        at = lines.index("parent run p1")
        assert lines[at + 1] == (
            "open in the MLflow UI once `petloc ui` runs:" if opener else "in the MLflow UI:"
        )
        assert sum("petloc ui" in line for line in lines) == opener
