"""A distributed sweep's worker: asks its chief for the sweep and then for trials, trains
each in a child run of the chief's parent run, and sends a heartbeat while it trains.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import keras_tuner as kt

from petloc import library_internals
from petloc.config import Experiment
from petloc.errors import PetlocError
from petloc.files import exclusive_lock
from petloc.search.distributed import (
    CHIEF_PATIENCE_SECONDS,
    DESCRIBE_METHOD,
    DESCRIBE_SERVICE,
    HEARTBEAT_SECONDS,
    TUNER_ID_METADATA,
    parse_address,
    repeating,
    use_chief,
)
from petloc.search.progress import duration
from petloc.search.state import fingerprint
from petloc.search.sweep import (
    data_preparer,
)
from petloc.search.time_budget import PACE
from petloc.search.tuner import SweepTuner, tuner_dir
from petloc.tracking import store
from petloc.tracking import vocabulary as vocab
from petloc.tracking.sweep_record import SweepRecord

WORKER_ID = re.compile(r"[A-Za-z0-9_-]{1,40}")


class WorkerTuner(SweepTuner):
    """A tuner whose oracle is the chief's: it sends a heartbeat while it trains and prints
    its own lines, prefixed by its ID. `patience`: the seconds any call waits for the chief."""

    holds_the_oracle = False

    def __init__(
        self,
        exp: Experiment,
        record: SweepRecord,
        data_for,
        worker_id: str,
        say,
        chief: str,
        patience: float = CHIEF_PATIENCE_SECONDS,
        **kwargs,
    ):
        self.worker_id, self.say, self.chief, self.patience = worker_id, say, chief, patience
        super().__init__(exp, record, data_for, say, **kwargs)
        # A chief gone for longer ends the worker, not hangs it.
        library_internals.limit_chief_calls(self.oracle, patience)
        self.run_tags = {vocab.WORKER: worker_id}

    def say_trial_begins(self, trial) -> None:
        self.progress.trial_begins(
            trial.trial_id, int(trial.trial_id) + 1, self.shown_values(trial)
        )

    def say_trial_ends(self, trial) -> None:
        # The worker's own trials only: the chief prints the sweep's progress.
        figures = self.figures.get(trial.trial_id)
        why = self.errors.get(trial.trial_id) or "see its run's error tag"
        self.progress.trial_ends(trial.trial_id, self.progress.ran + 1, figures, why, sweep=False)

    def run_trial(self, trial, *args, **kwargs):
        def silent(seconds: float) -> None:
            self.say(
                f"the chief at {self.chief} has not answered for {duration(seconds)}; this trial goes on, and "
                "its run counts once the chief is started again"
            )

        run_id = self.current_run_id
        assert run_id is not None, "a trial runs inside its run (trial_tracked)"
        with _heartbeat(self.oracle, trial.trial_id, silent):
            result = super().run_trial(trial, *args, **kwargs)
        # a later round may continue this trial on another machine
        if self.exp.tuner.kind == "hyperband":
            self.record.upload_checkpoint(run_id, self._weights_file(trial.trial_id))
        self._reach_chief(trial.trial_id)
        return result

    def ends_finished(self, err: BaseException) -> bool:
        return isinstance(err, ChiefLost)  # raised once the trial trained (`_reach_chief`)

    def _reach_chief(self, trial_id: str) -> None:
        """Before Keras Tuner reports the trial: a chief gone for longer than the worker's
        patience ends the worker in one line (Keras Tuner would count its lost call as a
        failure of the trial, whose run has in fact FINISHED)."""
        request = library_internals.oracle_messages().GetTrialRequest(trial_id=trial_id)
        try:
            self.oracle.stub.GetTrial(
                request,
                wait_for_ready=True,
                timeout=self.patience,
                metadata=((TUNER_ID_METADATA, self.oracle.tuner_id),),
            )
        except grpc.RpcError as err:
            raise ChiefLost(
                f"{err.code().name} after {duration(self.patience)}; trial {trial_id}'s run "
                "ended FINISHED and counts once the chief is started again"
            ) from None

    def _pace_reporter(self, trial_id: str) -> Callable[[int, float], None] | None:
        # To the chief at once or not at all, like the heartbeat: a missed report is no error,
        # and the training does not wait for the chief (Keras Tuner's client would, for its patience).
        # the worker's file; the chief's budget hears none without it
        if not self.exp.tuner.max_minutes:
            return None

        def report(epoch: int, seconds: float) -> None:
            request = library_internals.oracle_messages().UpdateTrialRequest(
                trial_id=trial_id, metrics={PACE: seconds}, step=epoch
            )
            with contextlib.suppress(grpc.RpcError):
                self.oracle.stub.UpdateTrial(request, timeout=HEARTBEAT_SECONDS)

        return report

    def _warm_start_weights(self, hp) -> Path | None:
        """Hyperband's earlier-round weights: from this machine's sweep folder, else from the
        earlier trial's run in the tracking server."""
        previous = hp.values.get("tuner/trial_id")
        if not previous or self._weights_file(previous).is_file():
            return super()._warm_start_weights(hp)
        downloaded = self.record.download_checkpoint(
            previous, self._weights_file(previous).name, Path(self.get_trial_dir(previous))
        )
        if downloaded is not None:
            return downloaded
        raise PetlocError(
            f"trial {hp.values.get('tuner/trial_id')}'s weights, which this trial continues, are neither "
            "in this machine's sweep folder nor in its run"
        )


class ChiefLost(kt.errors.FatalError):
    """The chief did not answer a worker within its patience (Keras Tuner lets it through)."""


@contextlib.contextmanager
def _heartbeat(
    oracle,
    trial_id: str,
    silent: Callable[[float], None],
    every: float = HEARTBEAT_SECONDS,
    patience: float = CHIEF_PATIENCE_SECONDS,
):
    """Ask the chief for this trial every few seconds while it trains: the chief counts each
    call as a sign of life. A missed beat is no error; the chief's timeout is many beats.
    After `patience` seconds without an answer, `silent` is told once."""
    request = library_internals.oracle_messages().GetTrialRequest(trial_id=trial_id)
    whose = ((TUNER_ID_METADATA, oracle.tuner_id),)  # a restarted chief gives the trial back to it
    answered, told = time.monotonic(), False

    def beat():
        nonlocal answered, told
        try:
            oracle.stub.GetTrial(request, timeout=every, metadata=whose)
            answered, told = time.monotonic(), False
        except grpc.RpcError:
            if not told and time.monotonic() - answered >= patience:
                silent(time.monotonic() - answered)
                told = True

    with repeating(beat, every, "petloc-heartbeat"):
        yield


def run_worker(
    exp: Experiment,
    worker_id: str,
    chief: str,
    wait_seconds: float = CHIEF_PATIENCE_SECONDS,
    say: Callable[[str], None] = print,
) -> None:
    """Run the chief's trials until it says there are none left."""
    if not WORKER_ID.fullmatch(worker_id) or "chief" in worker_id:
        shown = worker_id if len(worker_id) <= 40 else worker_id[:40] + "..."
        raise PetlocError(
            f"--worker {shown!r}: an ID of letters, digits, '_' and '-', and not 'chief'"
        )
    host, port = parse_address(chief, "--chief")
    store.configure(exp.tracking.uri)
    directory = tuner_dir(exp, store.STORE_DIR)
    busy = f"worker {worker_id} of sweep '{exp.name}' is already running on this machine; give this one another ID"
    with exclusive_lock(directory.with_name(f"{directory.name}.worker-{worker_id}.lock"), busy):
        record = _parent_of_the_chief(exp, ask_chief(host, port, wait_seconds, say), host, port)
        tuner_id = f"worker-{worker_id}"
        use_chief(host, port, tuner_id)
        named = lambda line: say(f"[{tuner_id}] {line.lstrip()}")  # noqa: E731  (one line each, named)
        data_for = data_preparer(exp, record, named)
        data_for(exp.data.image_size)
        tuner = WorkerTuner(
            exp,
            record,
            data_for,
            worker_id,
            named,
            f"{host}:{port}",
            wait_seconds,
            directory=str(directory.parent),
            project_name=directory.name,
            overwrite=False,
        )
        try:
            tuner.search()
        except (grpc.RpcError, ChiefLost) as err:
            why = err.code().name if isinstance(err, grpc.RpcError) else str(err)
            raise PetlocError(
                f"worker {worker_id}: lost the chief at {host}:{port} ({why}); "
                "start the worker again once the chief runs"
            ) from None
        named(f"no trials left in sweep '{exp.name}'; this worker ran {tuner.progress.ran}")


def ask_chief(host: str, port: int, patience: float, say: Callable[[str], None]) -> dict:
    """The sweep the chief at HOST:PORT serves (petloc's Describe method). Nothing listening
    there is waited for, up to `patience` seconds; anything else that is not a petloc chief
    is one line at once."""
    address = f"{host}:{port}"
    deadline, said = time.monotonic() + patience, False
    with grpc.insecure_channel(address) as channel:
        describe = channel.unary_unary(f"/{DESCRIBE_SERVICE}/{DESCRIBE_METHOD}")
        while True:
            try:
                return _sweep_of(describe(b"", timeout=min(5.0, patience)), address)
            except grpc.RpcError as err:
                if not _nobody_there(err):
                    details = (err.details() or "").strip().splitlines()
                    raise PetlocError(
                        f"--chief {address}: not a petloc chief ({err.code().name}: "
                        f"{details[0][:200] if details else 'no details'})"
                    ) from None
            if time.monotonic() >= deadline:
                raise PetlocError(
                    f"--chief {address}: no chief answered in {duration(patience)}; start it with "
                    "petloc sweep EXPERIMENT --chief --address HOST:PORT"
                ) from None
            if not said:
                say(f"waiting for the chief at {address} (up to {duration(patience)})")
                said = True
            time.sleep(1)


def _nobody_there(err: grpc.RpcError) -> bool:
    """Nothing listens (yet) at the address, or it does not answer in time; any other
    answer (an HTTP server, a gRPC server without petloc's method) is not a chief."""
    details = err.details() or ""
    return err.code() == grpc.StatusCode.DEADLINE_EXCEEDED or (
        err.code() == grpc.StatusCode.UNAVAILABLE
        and ("Connection refused" in details or "Socket closed" in details)
    )


def _sweep_of(answer: bytes, address: str) -> dict:
    try:
        sweep = json.loads(answer)
        keys = ("sweep", "fingerprint", "parent_run_id")
        if isinstance(sweep, dict) and all(isinstance(sweep.get(k), str) for k in keys):
            return sweep
    except ValueError:
        pass
    raise PetlocError(f"--chief {address}: not a petloc chief (its answer is no sweep)")


def _parent_of_the_chief(exp: Experiment, sweep: dict, host: str, port: int) -> SweepRecord:
    """The record of the chief's sweep, once this worker's settings match the chief's
    and the run is in this worker's tracking server."""
    parent = sweep["parent_run_id"]
    if sweep["sweep"] != exp.name or sweep["fingerprint"] != fingerprint(exp):
        raise PetlocError(
            f"sweep '{exp.name}': this worker's experiment settings differ from the chief's at "
            f"{host}:{port} (sweep '{sweep['sweep']}', run {parent}); give every worker the chief's "
            "file and overrides"
        )
    return SweepRecord.existing(
        parent,
        f"the chief at {host}:{port} logs to parent run {parent}, which is not in "
        f"{store.tracking_uri()}; point the chief and every worker at the same tracking server "
        "(tracking.uri or MLFLOW_TRACKING_URI)",
    )
