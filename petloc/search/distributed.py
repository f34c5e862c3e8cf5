"""One sweep, many processes: Keras Tuner's own distributed mode and one tracking server.

The chief holds the sweep as `petloc sweep` alone does (its folder, lock, sweep.json and
Keras Tuner's oracle) and answers the workers over gRPC with Keras Tuner's OracleServicer,
plus one method of petloc's own on the same port that tells a worker which sweep and which
parent run it serves. Each worker asks it for a trial, trains it in a child run of that
parent run, and reports back. The chief keeps a heartbeat on its parent run, so a second
chief of the same sweep on the same tracking server is refused while the first one lives.
While it trains, a worker sends a heartbeat; a worker silent for longer than the chief's worker timeout has its trial
marked failed (not re-queued: the other workers may have left, and a silent worker may
still be training it), so the sweep always ends. The leaderboard and the promotion happen
once, on the chief, after the last trial ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import keras_tuner as kt
from keras_tuner.engine.trial import Trial, TrialStatus

from petloc import library_internals
from petloc.config import Experiment
from petloc.errors import PetlocError
from petloc.files import exclusive_lock
from petloc.report import number
from petloc.search import DEFAULT_CHIEF_ADDRESS, SEARCH_OVER
from petloc.search.budget import PACE
from petloc.search.progress import duration, planned_trials
from petloc.search.state import fingerprint, sweep_state
from petloc.search.sweep import (
    SweepResult,
    data_preparer,
    failed_trials,
    finish,
    say_why_the_search_ended,
)
from petloc.search.tuner import TrackedTuner, searched_names, tuner_dir
from petloc.tracking import store
from petloc.tracking import vocabulary as vocab
from petloc.tracking.sweep_record import LiveChief, SweepRecord

HEARTBEAT_SECONDS = 5.0
# A worker's patience with a chief that does not answer (gone, restarting, or never there).
CHIEF_PATIENCE_SECONDS = 30.0
# The chief's sign of life on its parent run, for a second chief to see (SweepRecord.beat).
CHIEF_BEAT_SECONDS = 10.0
# petloc's own method beside Keras Tuner's: the sweep a chief serves (JSON).
DESCRIBE_SERVICE, DESCRIBE_METHOD = "petloc.Sweep", "Describe"
TUNER_ID_METADATA = "petloc-tuner-id"  # a worker's heartbeat says whose it is
WORKER_ID = re.compile(r"[A-Za-z0-9_-]{1,40}")
_ADDRESS = re.compile(r"(?P<host>[^\s:]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})")


def parse_address(text: str, option: str) -> tuple[str, int]:
    """HOST:PORT, or a one-line error naming the option."""
    match = _ADDRESS.fullmatch(text or "")
    if not match or not 0 < int(match["port"]) < 65536:
        raise PetlocError(
            f"{option} {text!r}: not HOST:PORT (such as {DEFAULT_CHIEF_ADDRESS}); overrides go before the options"
        )
    return match["host"], int(match["port"])


def _use_chief(host: str, port: int, tuner_id: str) -> None:
    # Keras Tuner reads its distributed settings from these variables when a tuner is made.
    os.environ.update(
        KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP=host, KERASTUNER_ORACLE_PORT=str(port)
    )


# ---- the chief ----------------------------------------------------------------------------


_OracleServicer: Any = library_internals.oracle_servicer()  # Keras Tuner's, not public


class ChiefServicer(_OracleServicer):
    """Keras Tuner's oracle service, plus when each worker was last heard from, a line per
    trial handed out and ended, and the consecutive-failure stop (Keras Tuner's own raises
    inside a worker's call and leaves the trial ongoing for ever)."""

    def __init__(
        self,
        oracle: kt.Oracle,
        planned: int,
        shown: list[str],
        max_failures: int | None,
        say: Callable[[str], None],
    ):
        super().__init__(oracle)
        self.planned, self.shown, self.max_failures, self.say = planned, shown, max_failures, say
        self.lock = threading.Lock()  # the service's calls against the chief's own timeout check
        self.started = time.monotonic()
        self.last_heard: dict[str, float] = {}
        self.stopped: str | None = None
        self.sweep: dict[str, str] = {}  # what `describe` hands a worker

    def _tuner_of(self, trial_id: str) -> str | None:
        return next(
            (
                tuner
                for tuner, trial in self.oracle.ongoing_trials.items()
                if trial.trial_id == trial_id
            ),
            None,
        )

    def _heard(self, tuner_id: str | None) -> None:
        if tuner_id is not None:
            self.last_heard[tuner_id] = time.monotonic()

    def CreateTrial(self, request, context):
        with self.lock:
            self._heard(request.tuner_id)
            if self.stopped:
                return self._stop(request.tuner_id)
            again = request.tuner_id in self.oracle.ongoing_trials
            response = super().CreateTrial(request, context)
            trial = Trial.from_proto(response.trial)
            if trial.status == TrialStatus.RUNNING:
                chosen = trial.hyperparameters.values
                values = "  ".join(f"{k}={number(chosen[k])}" for k in self.shown if k in chosen)
                note = " again (its earlier attempt there was cut short)" if again else ""
                self.say(f"trial {trial.trial_id} -> {request.tuner_id}{note}: {values}")
            return response

    def _stop(self, tuner_id: str):
        self.stop_triggered = True
        self.oracle.tuner_ids.discard(tuner_id)
        trial = Trial(self.oracle.get_space(), status=TrialStatus.STOPPED)
        return library_internals.oracle_messages().CreateTrialResponse(trial=trial.to_proto())

    def GetTrial(self, request, context):  # the workers' heartbeat
        with self.lock:
            self._adopt(
                request.trial_id, dict(context.invocation_metadata()).get(TUNER_ID_METADATA)
            )
            self._heard(self._tuner_of(request.trial_id))
            return super().GetTrial(request, context)

    def _adopt(self, trial_id: str, tuner_id: str | None) -> bool:
        """A trial that a restarted chief queued again (Keras Tuner re-queues the trials that
        were out when it reloads) but whose worker still runs it, heard from again: it goes
        back to that worker instead of to another one, which would train it a second time."""
        if (tuner_id or "") in self.oracle.ongoing_trials:
            return False
        if not library_internals.take_from_retry_queue(self.oracle, trial_id):
            return False
        trial = self.oracle.trials[trial_id]
        trial.status = TrialStatus.RUNNING
        tuner_id = tuner_id or f"the worker of trial {trial_id}"
        self.oracle.ongoing_trials[tuner_id] = trial
        self.say(
            f"trial {trial_id}: {tuner_id} is still running it, from before the chief started again"
        )
        return True

    def UpdateTrial(self, request, context):
        with self.lock:
            self._heard(self._tuner_of(request.trial_id))
            return super().UpdateTrial(request, context)

    def EndTrial(self, request, context):
        with self.lock:
            trial = Trial.from_proto(request.trial)
            # it ended while the chief was down: counted, not run again
            if self._adopt(trial.trial_id, None):
                self.say(
                    f"trial {trial.trial_id}: its {trial.status} report, sent while the chief was down, "
                    "is counted"
                )
            tuner = self._tuner_of(trial.trial_id)
            if tuner is None:  # already ended by the timeout below: its worker came back too late
                self.say(
                    f"trial {trial.trial_id}: a late {trial.status} report ignored; the trial had already ended"
                )
                return library_internals.oracle_messages().EndTrialResponse()
            self._heard(tuner)
            response = super().EndTrial(request, context)
            self._ended(trial.trial_id, tuner)
            return response

    def _ended(self, trial_id: str, tuner: str) -> None:
        trial = self.oracle.trials[trial_id]
        ended = len(self.oracle.end_order)
        elapsed = time.monotonic() - self.started
        if trial.status == TrialStatus.COMPLETED:
            miou, accuracy = (
                trial.metrics.get_last_value(name) for name in ("val_miou", "val_accuracy")
            )
            head = f"trial {trial_id} done on {tuner}: val mIoU {miou:.3f}, accuracy {accuracy:.3f}"
        else:
            why = (trial.message or "").strip().splitlines()
            head = f"trial {trial_id} {trial.status.lower()} on {tuner}: {why[-1] if why else 'no reason given'}"
        self.say(
            f"{head}  [sweep: {ended} of {self.planned} trials ended, {duration(elapsed)} elapsed]"
        )
        if self.max_failures and _failed_in_a_row(self.oracle) >= self.max_failures:
            self.stopped = (
                f"stopped after {self.max_failures} failed trials in a row; "
                "see the FAILED runs' 'error' tags"
            )

    def fail_silent_workers(self, timeout: float) -> list[tuple[str, str]]:
        """End FAILED the trial of each worker not heard from for `timeout` seconds; returns
        (trial_id, reason) of each."""
        failed = []
        with self.lock:
            now = time.monotonic()
            for tuner, trial in list(self.oracle.ongoing_trials.items()):
                silent = now - self.last_heard.get(tuner, self.started)
                if silent <= timeout:
                    continue
                trial.status = TrialStatus.FAILED
                trial.message = (
                    f"{tuner} was not heard from for {silent:.0f} s (worker timeout {timeout:g} s); "
                    "the trial is marked failed, not re-queued: run the sweep again to retry it"
                )
                self.oracle.end_trial(trial)
                self.oracle.tuner_ids.discard(tuner)
                self._ended(trial.trial_id, tuner)
                failed.append((trial.trial_id, trial.message))
        return failed

    def describe(self, request: bytes, context) -> bytes:
        """petloc's own method: which sweep this chief serves, and its parent run."""
        return json.dumps(self.sweep).encode()

    def done(self) -> bool:
        """Every worker was told there is nothing left, and no trial is still out."""
        return self.stop_triggered and not self.oracle.ongoing_trials and not self.oracle.tuner_ids


def _failed_in_a_row(oracle: kt.Oracle) -> int:
    count = 0
    for trial_id in reversed(oracle.end_order):
        if oracle.trials[trial_id].status != TrialStatus.FAILED:
            break
        count += 1
    return count


def run_chief(
    exp: Experiment,
    address: str,
    fresh: bool = False,
    worker_timeout: float = 300.0,
    say: Callable[[str], None] = print,
) -> SweepResult:
    """Hold the sweep's oracle and answer workers until its trials are over; then the
    leaderboard and the promotion, as a one-process sweep ends."""
    host, port = parse_address(address, "--address")
    _check_free(host, port)  # before the sweep's state is touched
    started = time.monotonic()
    vet = lambda recorded: refuse_a_second_chief(exp, recorded)  # noqa: E731
    with sweep_state(exp, fresh, vet) as (directory, record), _chief_heartbeat(record):
        record.mark_chief(f"{host}:{port}")
        _refuse_a_concurrent_chief(exp, record.parent_run_id)
        _use_chief(host, port, "chief")
        tuner = TrackedTuner(
            exp,
            record,
            None,
            say,
            started=started,
            directory=str(directory.parent),
            project_name=directory.name,
            overwrite=False,
        )
        tuner.count_finished_runs(say)
        oracle = tuner.oracle
        max_failures, oracle.max_consecutive_failed_trials = (
            oracle.max_consecutive_failed_trials,
            None,
        )
        tuner.save()
        servicer = ChiefServicer(
            oracle,
            planned_trials(exp, oracle),
            [*searched_names(exp), "tuner/epochs"],
            max_failures,
            say,
        )
        servicer.sweep = {
            "sweep": exp.name,
            "fingerprint": fingerprint(exp),
            "parent_run_id": record.parent_run_id,
        }
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        library_internals.add_oracle_servicer(servicer, server)
        describe = grpc.unary_unary_rpc_method_handler(servicer.describe)  # bytes in, bytes out
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(DESCRIBE_SERVICE, {DESCRIBE_METHOD: describe}),)
        )
        server.add_insecure_port(f"{host}:{port}")
        server.start()
        say(
            f"chief of sweep '{exp.name}' on {host}:{port}, tracking to {store.tracking_uri()}; "
            f"workers: petloc sweep EXPERIMENT --worker ID --chief {host}:{port}"
        )
        try:
            while not servicer.done():
                time.sleep(1)
                for trial_id, reason in servicer.fail_silent_workers(worker_timeout):
                    record.fail_running(reason, trial_id)
        finally:
            server.stop(grace=2)
        # A worker that lost the tracking server could not close its run; the oracle knows
        # how its trial ended, so the run does not stay RUNNING for ever.
        record.fail_running(
            "its worker could not close this run (was the tracking server unreachable?); "
            "the trial ended as the sweep's chief recorded it"
        )
        say_why_the_search_ended(tuner, record, servicer.stopped, servicer.planned, say)
        say(f"{SEARCH_OVER} every trial has ended; the sweep's end runs here on the chief")
        return finish(exp, record, failed_trials(oracle), servicer.stopped, say, tuner.time_budget)


def refuse_a_second_chief(exp: Experiment, recorded: str | None) -> None:
    """One line when another chief of this sweep is alive on this tracking server: two
    parents of one sweep split its trials. `recorded`, the parent this folder holds, is
    this chief's own, as after a kill -9: it may be started again at once."""
    for chief in SweepRecord.live_chiefs(exp):
        if chief.run_id != recorded:
            raise _another_chief(exp, chief)


def _another_chief(exp: Experiment, chief: LiveChief) -> PetlocError:
    return PetlocError(
        f"sweep '{exp.name}' already has a live chief on {chief.host} (at {chief.address}, parent run "
        f"{chief.run_id}); point workers at it, or stop it and start this one again"
    )


def _refuse_a_concurrent_chief(exp: Experiment, parent: str) -> None:
    """Two chiefs started at once may both pass the check before either has beaten: once
    this chief's heartbeat is on its parent, the one whose parent is older wins."""
    own = (SweepRecord(parent).started(), parent)
    for chief in SweepRecord.live_chiefs(exp):
        if chief.run_id != parent and (chief.started, chief.run_id) < own:
            raise _another_chief(exp, chief)


@contextlib.contextmanager
def _chief_heartbeat(record: SweepRecord, every: float = CHIEF_BEAT_SECONDS):
    """The chief's parent run carries the time it was last alive, every few seconds, until
    the sweep ends (its final run included). A missed beat is no error."""

    def beat():
        # the tracking server may be down a while; the sweep goes on
        with contextlib.suppress(Exception):
            record.beat()

    beat()  # the first before this chief checks for a concurrent one
    with _repeating(beat, every, "petloc-chief-heartbeat"):
        yield


@contextlib.contextmanager
def _repeating(action: Callable[[], None], every: float, name: str):
    """Calls `action` every `every` seconds, on a thread of its own, while the block runs."""
    stop = threading.Event()

    def loop():
        while not stop.wait(every):
            action()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2 * every)


def _check_free(host: str, port: int) -> None:
    """One line when the chief cannot listen at HOST:PORT (gRPC would only log it)."""
    try:
        with socket.create_server((host.strip("[]"), port)):
            pass
    except OSError as err:
        raise PetlocError(
            f"--address {host}:{port}: cannot listen there ({err.strerror or err})"
        ) from None


# ---- a worker -----------------------------------------------------------------------------


class WorkerTuner(TrackedTuner):
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

        with _heartbeat(self.oracle, trial.trial_id, silent):
            result = super().run_trial(trial, *args, **kwargs)
        # a later round may continue this trial on another machine
        if self.exp.tuner.kind == "hyperband":
            self.record.upload_checkpoint(
                self.trial_runs[trial.trial_id], self._weights_file(trial.trial_id)
            )
        self._reach_chief(trial.trial_id)
        return result

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

    with _repeating(beat, every, "petloc-heartbeat"):
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
        _use_chief(host, port, tuner_id)
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
