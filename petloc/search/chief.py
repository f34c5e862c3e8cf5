"""A distributed sweep's chief: the oracle served to the workers over gRPC, their trials
watched, and the sweep's end (leaderboard, promotion) run once the last trial has ended.

The chief keeps a heartbeat on its parent run, so a second chief of the same sweep on the
same tracking server is refused while the first one lives. A worker silent for longer than
the chief's worker timeout has its trial marked failed (not re-queued: the other workers may
have left, and a silent worker may still be training it), so the sweep always ends.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
import keras_tuner as kt
from keras_tuner.engine.trial import Trial, TrialStatus

from petloc import library_internals
from petloc.config import Experiment
from petloc.errors import PetlocError
from petloc.report import figure, number
from petloc.search import SEARCH_OVER
from petloc.search.distributed import (
    DESCRIBE_METHOD,
    DESCRIBE_SERVICE,
    TUNER_ID_METADATA,
    parse_address,
    repeating,
    use_chief,
)
from petloc.search.ending import failed_trials
from petloc.search.progress import duration, planned_trials
from petloc.search.state import fingerprint, sweep_state
from petloc.search.sweep import (
    SweepResult,
    finish,
    say_why_the_search_ended,
)
from petloc.search.tuner import SweepTuner, searched_names
from petloc.tracking import store
from petloc.tracking.sweep_record import LiveChief, SweepRecord

# The chief's sign of life on its parent run, for a second chief to see (SweepRecord.beat).
CHIEF_BEAT_SECONDS = 10.0


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
                figure(name, trial.metrics.get_last_value(name))
                for name in ("val_miou", "val_accuracy")
            )
            head = f"trial {trial_id} done on {tuner}: val mIoU {miou}, accuracy {accuracy}"
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
        use_chief(host, port, "chief")
        tuner = SweepTuner(
            exp,
            record,
            None,
            say,
            started=started,
            directory=str(directory.parent),
            project_name=directory.name,
            overwrite=False,
        )
        tuner.count_finished_runs()
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
    with repeating(beat, every, "petloc-chief-heartbeat"):
        yield


def _check_free(host: str, port: int) -> None:
    """One line when the chief cannot listen at HOST:PORT (gRPC would only log it)."""
    try:
        with socket.create_server((host.strip("[]"), port)):
            pass
    except OSError as err:
        raise PetlocError(
            f"--address {host}:{port}: cannot listen there ({err.strerror or err})"
        ) from None
