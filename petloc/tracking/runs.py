"""The life of an MLflow run, owned here alone: experiments, creating and nesting runs,
their status, which process owns them, and finding a sweep's children."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from petloc import stopping
from petloc.errors import PetlocError
from petloc.tracking import log, store
from petloc.tracking import vocabulary as vocab
from petloc.tracking.store import STORE_DIR


def experiment_id(name: str, setting: str = "set tracking.experiment") -> str:
    """The MLflow experiment `name`, created on first use with artifacts under mlruns/artifacts.
    `setting`: how the user names another experiment, for the error of a deleted one."""
    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found and found.lifecycle_stage == "deleted":
        raise PetlocError(
            f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore) "
            f"or {setting} to another name"
        )
    if found:
        return found.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        location = (STORE_DIR / "artifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def create_run(experiment_id: str, run_name: str, tags: dict[str, str] | None = None) -> str:
    """A new RUNNING run owned by this process; every petloc run starts here."""
    tags = {**(tags or {}), vocab.OWNER: this_process()}
    stopping.raise_if_stopped()  # a stop some library swallowed earlier: before any run exists
    # A stop arriving while the store makes the run waits for its ID, so the run can be ended
    # KILLED: raised inside the call, the run would stay RUNNING until the next start.
    run_id = None
    try:
        with stopping.held_back():
            run_id = (
                MlflowClient().create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
            )
        if (stop := stopping.pending()) is not None:
            raise stop
    except BaseException as err:
        if run_id is None:
            raise
        raise end_run(run_id, err)  # noqa: B904  (err or its interrupt; also a stop landing just as the hold ended)
    return run_id


def claim_run(run_id: str) -> None:
    """Mark an existing run (a resumed sweep's parent) RUNNING and owned by this process."""
    client = MlflowClient()
    client.set_tag(run_id, vocab.OWNER, this_process())
    # the reason it stopped last time no longer holds
    if vocab.ERROR in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, vocab.ERROR)
    client.update_run(run_id, status="RUNNING")


def this_process() -> str:
    # Without /proc (not Linux) there is no start time: a name no host has, which
    # owner_alive counts as alive, so no other process takes the run over.
    return _owner(os.getpid()) or "unknown"


def _owner(pid: int) -> str | None:
    """host:pid:start; the start time (clock ticks after boot) tells a reused pid apart."""
    try:
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    return f"{socket.gethostname()}:{pid}:{start}"


def owner_alive(owner: str) -> bool:
    """Whether the process named by a `petloc.owner` tag still runs. A process on another host
    cannot be checked from here, so it counts as alive."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    return _owner(int(pid)) == owner


def end_orphans(run_ids: list[str], why: str) -> list[str]:
    """End KILLED each RUNNING run among `run_ids` whose owning process has died; returns them."""
    client = MlflowClient()
    ended = []
    for run_id in run_ids:
        run = client.get_run(run_id)
        owner = run.data.tags.get(vocab.OWNER)
        if run.info.status != "RUNNING" or not owner or owner_alive(owner):
            continue
        client.set_tag(
            run_id, vocab.ERROR, f"its process ({owner}) ended without closing the run; {why}"
        )
        client.set_terminated(run_id, "KILLED")
        ended.append(run_id)
    return ended


def child_runs(parent_run_id: str, where: str = "", order_by: list[str] | None = None) -> list:
    """The runs nested under `parent_run_id`, optionally filtered (`attributes.status = 'FAILED'`)."""
    client = MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    query = f"tags.{vocab.PARENT_RUN_ID} = '{parent_run_id}'" + (f" and {where}" if where else "")
    return client.search_runs([experiment_id], query, order_by=order_by, max_results=50000)


def end_run(run_id: str, err: BaseException) -> BaseException:
    """End `run_id` FAILED, or KILLED for an interrupt (also one that a library turned into an
    error of its own), with the reason as its `error` tag; returns what to raise."""
    err = stopping.interrupt_behind(err)
    client = MlflowClient()
    client.set_tag(run_id, vocab.ERROR, f"{type(err).__name__}: {err}"[:5000])
    client.set_terminated(run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
    return err


@contextlib.contextmanager
def run_status(run_id: str):
    """Ends MLflow run `run_id` FINISHED, or FAILED / KILLED with the reason as its `error` tag."""
    try:
        with log.system_metrics(run_id):
            yield
    except BaseException as err:  # noqa: BLE001  (every end, Ctrl+C too, ends the run; re-raised)
        raise end_run(run_id, err)  # noqa: B904  (err itself, or the interrupt behind it with err as its cause)
    end_finished(run_id)


def end_finished(run_id: str) -> None:
    MlflowClient().set_terminated(run_id, "FINISHED")


def running_parent(experiment: str, tags: dict[str, str]) -> str | None:
    """The RUNNING parent run with `tags` (values compared here, not pasted into the filter)
    in experiment `experiment`, the latest when there are several; one whose process is known
    to have died (left RUNNING by a kill) does not count. None when there is none, nor the
    experiment: a worker looking for its chief's run never creates the experiment itself."""
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage == "deleted":
        return None
    candidates = client.search_runs(
        [found.experiment_id],
        f"attributes.status = 'RUNNING' and tags.`{vocab.KIND}` = '{vocab.SWEEP_KIND}'",
        order_by=["attributes.start_time DESC"],
        max_results=1000,
    )
    for run in candidates:
        owner = run.data.tags.get(vocab.OWNER)
        if all(run.data.tags.get(key) == value for key, value in tags.items()) and (
            not owner or owner_alive(owner)
        ):
            return run.info.run_id
    return None


def why_failed(err: Exception) -> str:
    """A failed run's reason in one line; a tracking server that stopped answering or refused
    the call is named."""
    first = str(err).splitlines()[0] if str(err) else ""
    if isinstance(err, MlflowException) and "Max retries exceeded" in first:
        return (
            f"the tracking server {store.tracking_uri()} did not answer, even after MLflow's "
            f"retries ({first[:160]}...)"
        )
    refused = store.refusal(err)  # a password changed mid-sweep, a permission taken back
    if refused:
        return refused
    return f"{type(err).__name__}: {first}"
