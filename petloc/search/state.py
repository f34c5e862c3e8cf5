"""A sweep's state on this machine: its folder `mlruns/tuner/<name>/` (Keras Tuner's own
oracle files and `sweep.json`: the parent run and a fingerprint of the experiment) and the
lock `mlruns/tuner/<name>.lock`, held by the process running the sweep, so a second start
of the same sweep is refused at once. Its runs are recorded through `petloc.tracking.sweep_record`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from petloc.config import Experiment
from petloc.errors import PetlocError
from petloc.files import (
    SMALL_FILE_LIMIT,
    atomic_write_text,
    exclusive_lock,
    read_bounded,
    remove_tree,
)
from petloc.search.tuner import tuner_dir
from petloc.tracking import runs, store
from petloc.tracking.sweep_record import RESUMABLE_TUNER_SETTINGS, SweepRecord

TUNER_STATE_LIMIT = (
    16_000_000  # bytes of one of Keras Tuner's JSON files: its oracle's grows with the trials
)


ADDED_SETTINGS: tuple[tuple[str, str, object], ...] = (
    ("", "plugins", []),
    ("data", "labels", "species"),
)


def fingerprint(exp: Experiment) -> str:
    """What makes two sweeps the same sweep: everything but the trial and time budgets, which
    may grow, and what only the sweep's end does (the final run, the registry section)."""
    body = exp.model_dump(mode="json")
    for what_may_change in RESUMABLE_TUNER_SETTINGS:
        body["tuner"].pop(what_may_change)
    body.pop("registry")
    # settings added since a sweep may have started, at their defaults: the same sweep as before
    for section, key, default in ADDED_SETTINGS:
        holder = body[section] if section else body
        if holder.get(key) == default:
            holder.pop(key)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _parent_record(exp: Experiment, state_file: Path, experiment_id: str) -> SweepRecord:
    """The sweep's parent run: the one recorded in sweep.json, or a new one."""
    state = _read_state(state_file)
    if state is None:
        record = SweepRecord.create(exp, fingerprint(exp), experiment_id)
        try:
            state = {"parent_run_id": record.parent_run_id, "fingerprint": fingerprint(exp)}
            atomic_write_text(state_file, json.dumps(state))
            record.log_settings(exp, fingerprint(exp))
        except BaseException as err:  # noqa: BLE001  (a stop or a store error ends the new parent; re-raised)
            raise record.ended(err)  # noqa: B904  (err itself, or the interrupt behind it with err as its cause)
        return record
    if state["fingerprint"] != fingerprint(exp):
        raise PetlocError(
            f"{state_file.parent}: the sweep '{exp.name}' was started with different settings; "
            "run it with --fresh to start over, or give the experiment another name"
        )
    return SweepRecord.resume(exp, fingerprint(exp), state["parent_run_id"], state_file)


def _read_state(state_file: Path) -> dict | None:
    """sweep.json, None when the sweep has not started; a damaged file is a user error."""
    if not state_file.exists():
        return None
    try:
        state = json.loads(read_bounded(state_file, SMALL_FILE_LIMIT))
        if isinstance(state, dict) and {"parent_run_id", "fingerprint"} <= set(state):
            return state
    except (OSError, ValueError):  # a FIFO, device or huge file is UnreadableFile: its own line
        pass
    raise PetlocError(
        f"{state_file}: damaged sweep state (empty or cut short); run with --fresh to start over"
    )


def recorded_parent(state_file: Path) -> str | None:
    """The parent run that sweep.json records, None when there is none or it is damaged."""
    with contextlib.suppress(PetlocError):
        state = _read_state(state_file)
        return state["parent_run_id"] if state else None
    return None


def _retire(state_file: Path) -> None:
    """--fresh: the old sweep's runs that a dead process left RUNNING end KILLED."""
    # damaged state: nothing to retire, and --fresh replaces it
    parent = recorded_parent(state_file)
    if parent is not None:
        SweepRecord(parent).retire("the sweep was started again with --fresh")


def check_state_files(directory: Path) -> None:
    """Keras Tuner's own JSON files (oracle, trials) must be whole, or it fails with a traceback."""
    for path in sorted(directory.rglob("*.json")):
        try:
            json.loads(read_bounded(path, TUNER_STATE_LIMIT))  # UnreadableFile: its own line
        except (OSError, ValueError):
            raise PetlocError(
                f"{path}: damaged sweep state (empty or cut short, as a kill during a write leaves it); "
                "run with --fresh to start over"
            ) from None


@contextlib.contextmanager
def sweep_state(exp: Experiment, fresh: bool, vet: Callable[[str | None], None] | None = None):
    """The sweep's folder and its SweepRecord, held by this process (its lock) until the sweep
    ends; the parent run ends FINISHED, or FAILED / KILLED with the reason. `vet` is called
    under the lock, before any run is made or claimed, with the parent run this folder
    recorded (None for a new sweep): it raises to refuse the start."""
    store.configure(exp.tracking.uri)
    directory = tuner_dir(exp, store.STORE_DIR)
    busy = f"sweep '{exp.name}' is already running in another process; wait for it, or stop it and run this again"
    with exclusive_lock(directory.with_name(directory.name + ".lock"), busy):
        experiment_id = runs.experiment_id(exp.tracking.experiment)
        if vet is not None:
            vet(recorded_parent(directory / "sweep.json"))
        if fresh:
            _retire(directory / "sweep.json")
            remove_tree(directory, directory.parent)
        check_state_files(directory)
        record = _parent_record(exp, directory / "sweep.json", experiment_id)
        try:
            yield directory, record
        except BaseException as err:  # noqa: BLE001  (every end, Ctrl+C too, ends the parent run; re-raised)
            raise record.ended(err)  # noqa: B904  (err itself, or the interrupt behind it with err as its cause)
        record.ended()
