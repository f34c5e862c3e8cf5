"""The final run of a sweep: the best trial's configuration trained again from scratch for
`tuner.final_epochs` (more with `tuner.fill_budget`), as one more child run (`trial_id` "final").
A multi-fidelity search (Hyperband) judges configurations by short trials; the model worth
shipping is the winner trained at full length. The leaderboard and the promotion weigh it like any trial.

A final run keeps its training state after each epoch (under the sweep's tuner folder), so a
sweep interrupted during it (Ctrl+C, a kill, a lost machine) and run again resumes that run,
in the same MLflow run, from its last finished epoch instead of training it again."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from petloc.config import Experiment
from petloc.files import remove_tree
from petloc.search.progress import headline
from petloc.search.tuner import tuner_dir
from petloc.tracking import runs, store
from petloc.tracking import vocabulary as vocab
from petloc.tracking.reproduce import hyperparameters_of
from petloc.tracking.sweep_record import SweepRecord
from petloc.tracking.training_runs import train_tracked
from petloc.training.dataset import prepare_data
from petloc.training.fit import has_backup, resolved_precision


def train_final(
    exp: Experiment,
    record: SweepRecord,
    best: dict,
    say: Callable[[str], None],
    epochs_for: Callable[[dict], int] | None = None,
) -> str | None:
    """Trains the configuration of leaderboard row `best` for `exp.tuner.final_epochs` epochs
    (or `epochs_for(values)`: `tuner.fill_budget`) in a child run of the sweep; None when that
    was done already (a sweep run again)."""
    least = exp.tuner.final_epochs

    # this configuration's final run, at the length asked (or more, when filling)
    def done(run) -> bool:
        trained = int(run.data.params.get(vocab.EPOCHS, 0))
        return run.data.tags.get(vocab.SOURCE_RUN) == best["run_id"] and (
            trained >= least if exp.tuner.fill_budget else trained == least
        )

    if any(done(run) for run in record.runs_of(vocab.FINAL_TRIAL, "FINISHED")):
        return None
    values = hyperparameters_of(record.run(best["run_id"]).data.params)
    backups = tuner_dir(exp, store.STORE_DIR) / "final"
    # another machine may train in another
    precision = resolved_precision(exp.train.precision, int(values["image_size"]))

    def resumable(run) -> bool:
        return (
            done(run)
            and run.data.params.get(vocab.PRECISION) == precision
            and has_backup(backups / run.info.run_id)
        )

    interrupted = next(filter(resumable, record.runs_of(vocab.FINAL_TRIAL, "KILLED")), None)
    data = prepare_data(exp.data, int(values["image_size"]), say=lambda _: None)
    if interrupted:
        run_id, epochs = interrupted.info.run_id, int(interrupted.data.params[vocab.EPOCHS])
        runs.claim_run(run_id)
        say(
            f"\nfinal run: resuming run {run_id} ({epochs} epochs of trial {best['trial']}'s "
            "configuration) from its last finished epoch"
        )
    else:
        epochs = epochs_for(values) if epochs_for else least
        filled = (
            f" (tuner.fill_budget: the time left holds {epochs - least} more than tuner.final_epochs)"
            if epochs > least
            else ""
        )
        say(
            f"\nfinal run: trial {best['trial']}'s configuration from scratch for {epochs} epochs{filled}"
        )
        tags = {vocab.SOURCE_RUN: best["run_id"], vocab.SOURCE_TRIAL: str(best["trial"])}
        run_id = record.child_run(vocab.FINAL_TRIAL, f"final-{values.get('backbone', '')}", tags)
    how = (
        "from scratch, resumed from its last finished epoch after a stop"
        if interrupted
        else "from scratch"
    )
    with runs.run_status(run_id):
        summary = train_tracked(
            exp,
            values,
            data,
            run_id,
            epochs=epochs,
            backup=backups / run_id,
            description=f"Final run of sweep '{exp.name}': trial {best['trial']}'s configuration {how}",
            say=say,
        )
    _remove_stale_backups(record, backups, best["run_id"], epochs)
    # Keras removed this run's backup; the folder goes too unless another run's is there
    with contextlib.suppress(OSError):
        backups.rmdir()
    say(f"final run: {headline(summary)}")
    return run_id


def _remove_stale_backups(record: SweepRecord, backups: Path, source_run: str, epochs: int) -> None:
    """Removes the backups that no sweep run can resume now that a final run of `source_run`'s
    configuration has finished at `epochs`: those of stopped final runs of the same
    configuration and length (a sweep asking for it finds the finished run first, whatever
    the precision), and those of runs no longer in the store. A stopped run of another length
    keeps its backup: the sweep run again with that `final_epochs` resumes it."""
    if not backups.is_dir():
        return
    finals = {run.info.run_id: run for run in record.runs_of(vocab.FINAL_TRIAL)}
    for folder in backups.iterdir():
        run = finals.get(folder.name)
        if run is None or (
            run.data.tags.get(vocab.SOURCE_RUN) == source_run
            and int(run.data.params.get(vocab.EPOCHS, -1)) == epochs
        ):
            remove_tree(folder, backups)
