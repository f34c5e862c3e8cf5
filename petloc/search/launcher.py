"""`petloc sweep EXP --workers N`: a chief and N workers as processes of this machine.

Each is the same `petloc sweep` a user would start by hand on other machines; this only
starts them on a free local port, prefixes each worker's lines with its name, waits for
the chief, and stops them all on Ctrl+C (or SIGTERM, which the CLI turns into one).
Kept free of TensorFlow: the processes it starts do the work.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from petloc import processes
from petloc.quiet import started_verbose
from petloc.search import SEARCH_OVER

STOP_GRACE_SECONDS = 30  # a stopped process ends its MLflow runs KILLED before it exits
WORKERS_GONE_GRACE_SECONDS = (
    20  # the chief says "search over" within a second or two of its last worker
)


def run_on_this_machine(
    experiment: str,
    overrides: tuple[str, ...],
    workers: int,
    fresh: bool,
    worker_timeout: float,
    say: Callable[[str], None] = print,
) -> int:
    """The chief's exit code once it ends (0: the sweep finished)."""
    address = f"127.0.0.1:{_free_port()}"
    # under `petloc --verbose sweep`, the chief and workers show the libraries' lines too
    verbose = ["--verbose"] if started_verbose() else []
    command = [sys.executable, "-m", "petloc", *verbose, "sweep", experiment, *overrides]
    say(
        f"sweep with {workers} worker process{'es' if workers > 1 else ''} on this machine (chief on {address})"
    )
    chief = Child(
        [
            *command,
            "--chief",
            "--address",
            address,
            "--worker-timeout",
            str(worker_timeout),
            *(["--fresh"] if fresh else []),
        ],
        "",
        say,
    )
    started: list[Child] = []
    try:
        # The workers once the chief listens: a worker waits for a chief only briefly, and the
        # chief's start (TensorFlow, the tracking store) may take longer on a busy machine.
        if _wait_until_listening(chief, address):
            started += [
                Child([*command, "--worker", str(n), "--chief", address], f"[worker-{n}] ", say)
                for n in range(1, workers + 1)
            ]
        code = _wait_for_chief(chief, started, say)
        for worker in started:  # told "no trials left" already; they exit at once
            _stop(worker, wait_first=STOP_GRACE_SECONDS)
    except KeyboardInterrupt:
        # The workers first, all at once, while the chief still answers them: each ends its
        # trial's run KILLED (a worker blocked on a call to a gone chief would not).
        say("stopping the workers, then the chief")
        _stop_all(started)
        _stop_all([chief])
        raise
    for process in [chief, *started]:  # their last lines (the chief's leaderboard) before ours
        process.relay.join(timeout=10)
    failed = [n for n, worker in enumerate(started, 1) if worker.returncode not in (0, None)]
    if failed:
        say(
            f"worker{'s' if len(failed) > 1 else ''} {', '.join(map(str, failed))} "
            "exited with an error (see its lines above)"
        )
    return code


def _wait_until_listening(chief: subprocess.Popen, address: str) -> bool:
    """Whether the chief listens at `address`; False once it has exited without."""
    host, port = address.rsplit(":", 1)
    while chief.poll() is None:
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return True
        except OSError:
            time.sleep(0.5)
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child(subprocess.Popen):
    """A chief or worker process whose output lines reach `say`, prefixed (the workers' lines
    carry their own name already; the prefix marks their errors too), read on a thread of
    their own; `search_over` once it has said so."""

    def __init__(self, command: list[str], prefix: str, say: Callable[[str], None]):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Its own process group: Ctrl+C reaches only this launcher, which stops each child in turn.
        super().__init__(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.prefix, self.say = prefix, say
        self.search_over = False
        self.relay = threading.Thread(target=self._relay, daemon=True)
        self.relay.start()

    def _relay(self) -> None:
        assert self.stdout is not None  # a pipe, by the constructor
        for line in self.stdout:
            line = line.rstrip("\n")
            self.search_over = self.search_over or line.startswith(SEARCH_OVER)
            self.say(line if not line or line.startswith(self.prefix) else f"{self.prefix}{line}")


def _wait_for_chief(chief: Child, workers: list[Child], say: Callable[[str], None]) -> int:
    """The chief's exit code; if every worker has gone and the chief still waits for one
    (they all failed to start), the chief is stopped. Once it says the search is over, it
    runs the sweep's end (a final run may train for a while) and is left to finish."""
    gone_since = None
    while chief.poll() is None:
        time.sleep(0.5)
        if not chief.search_over and all(worker.poll() is not None for worker in workers):
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since > WORKERS_GONE_GRACE_SECONDS:
                say("every worker has exited and the chief still waits: stopping it")
                _stop(chief)
    return chief.wait()


def _stop_all(group: list[Child]) -> None:
    """SIGTERM to each (the CLI ends its runs KILLED and ignores a second one), then wait."""
    for process in group:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in group:
        processes.stop(process, signal.SIGTERM, STOP_GRACE_SECONDS)


def _stop(process: subprocess.Popen, wait_first: float = 0) -> None:
    """After `wait_first` seconds, SIGTERM (the CLI handles it as Ctrl+C), then SIGKILL after STOP_GRACE_SECONDS."""
    try:
        process.wait(timeout=wait_first)
    except subprocess.TimeoutExpired:
        processes.stop(process, signal.SIGTERM, STOP_GRACE_SECONDS)
