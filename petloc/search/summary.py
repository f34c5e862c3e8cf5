"""What a sweep tells its user at the end: the leaderboard, the promotion, where the model is."""

from __future__ import annotations

import shlex

from petloc.report import table
from petloc.tracking.ui_links import OPEN_COMMAND
from petloc.tracking.vocabulary import ENSEMBLE_TRIAL, FINAL_TRIAL, trial_rows


def sweep_summary(name: str, result, seconds: float, model_ref: str) -> list[str]:
    """What to print, line by line, after the sweep `name` gave `result` (a SweepResult) in
    `seconds` (the leaderboard is one entry of several lines); `model_ref` names the promoted
    model, such as petloc@champion."""
    trials = len(trial_rows(result.leaderboard))
    ends = {row["trial"] for row in result.leaderboard} & {FINAL_TRIAL, ENSEMBLE_TRIAL}
    extra = "".join(
        f", {what}"
        for trial, what in ((FINAL_TRIAL, "the final run"), (ENSEMBLE_TRIAL, "their ensemble"))
        if trial in ends
    )
    lines = [
        "",
        f"Leaderboard of sweep '{name}' ({trials} finished, {result.failed} failed{extra}, {seconds:.0f} s):",
        table(
            [{k: v for k, v in row.items() if k != "run_id"} for row in result.leaderboard],
            same_decimals=True,
        ),
    ]
    if result.promotion:
        lines += ["", f"registry: {result.promotion.reason}"]
    quoted = shlex.quote(model_ref)  # a registered name may hold quotes or spaces
    # The links block names what serves its pages (or says a server already does); without
    # it, the one command that opens the UI follows the parent run's id.
    links = result.links.lines() if result.links else []
    browse = "" if links else f"; browse with: {OPEN_COMMAND}"
    return [
        *lines,
        "",
        f"parent run {result.parent_run_id}{browse}",
        *links,
        f"pull the model by name: petloc predict {quoted} photo.jpg  |  petloc evaluate {quoted} DATA",
        f"from Python: petloc.load_model({model_ref!r}).predict([image])",
    ]
