"""`petloc ui`: MLflow's UI on the project's store, opened on the pages a petloc user wants.

A tracking server serves its own UI, so then only its pages are told; otherwise `mlflow ui`
runs here until Ctrl+C or SIGTERM.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from petloc.errors import PetlocError
from petloc.tracking import auth, server, store

# MLflow's UI shows its GenAI pages unless the page's URL or the browser's own choice (the
# "Model training" switch, kept in the browser's localStorage) says otherwise; no server setting does.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
UI_EXPERIMENTS_LISTED = 5


def serve_ui(
    host: str,
    port: int,
    workers: int,
    allow_unauthenticated: bool = False,
    say: Callable[[str], None] = print,
) -> int:
    """Check the inputs, tell the UI's pages, and run `mlflow ui` until it ends; its exit code.
    0 at once when the store is a tracking server, which serves its own UI.

    `allow_unauthenticated`: serve a `host` beyond this machine without users (--no-auth)."""
    # MLflow's UI changes and deletes too; it has no users of its own
    if not allow_unauthenticated and not auth.is_loopback(host):
        raise PetlocError(
            f"--host {host} lets other machines change and delete every run and model: share the store "
            "with petloc tracking-server --auth, or say --no-auth"
        )
    uri = store.configure()
    if uri.startswith(("http://", "https://")):
        shown = store.shown_uri(uri)  # no password on the terminal
        say(f"the tracking server {shown} serves the MLflow UI: open {shown}")
        for line in ui_pages(shown):
            say(line)
        return 0
    server.check_port_free(host, port)  # else MLflow's bind error drowns in its log and we exit 0
    say(f"MLflow UI for {store.shown_uri(uri)}  (Ctrl+C to stop)")
    for line in ui_pages(server.client_uri_of(host, port)):
        say(line)
    mlflow_ui = subprocess.Popen(_ui_command(uri, host, port, workers), env=_ui_env())
    try:
        return mlflow_ui.wait()
    except KeyboardInterrupt:  # Ctrl+C reaches the server too; SIGTERM reaches only us: pass it on
        mlflow_ui.terminate()
        mlflow_ui.wait(timeout=30)
        raise


def _ui_command(uri: str, host: str, port: int, workers: int) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
    if uri.startswith("sqlite:"):
        cmd += ["--default-artifact-root", (store.STORE_DIR / "artifacts").resolve().as_uri()]
    # MLflow's default of 4 workers costs memory and start-up for one user
    return [*cmd, "--workers", str(workers)]


def _ui_env() -> dict:
    # MLflow's job queues serve its GenAI features, which petloc does not use; off, the UI
    # starts sooner and leaves nothing behind in /dev/shm.
    env = {**os.environ}
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def ui_pages(base: str) -> list[str]:
    """Where a petloc user wants to land: the experiments, and the runs of the latest ones."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiments = client.search_experiments(
        max_results=UI_EXPERIMENTS_LISTED + 1, order_by=["last_update_time DESC"]
    )
    with_runs = [
        e
        for e in experiments
        if e.name != "Default" or client.search_runs([e.experiment_id], max_results=1)
    ]
    lines = [f"  experiments    {base}/#/experiments"]
    lines += [
        f"  runs of {e.name}    {base}/#/experiments/{e.experiment_id}/runs?{MODEL_TRAINING_VIEW}"
        for e in with_runs[:UI_EXPERIMENTS_LISTED]
    ]
    lines.append(
        'MLflow opens on its GenAI pages: choose "Model training" at its top left once, '
        "and this browser shows runs and models."
    )
    return lines
