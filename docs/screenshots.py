"""The pictures in README.md and docs/: what `make run` makes, as a user sees it.

From a clean store in a scratch folder, runs the quick sweep (`experiments/quick.yaml`, as
`make run` does; `--tiny` runs 2 short trials instead), starts `petloc ui` on a free port and
drives Debian's headless Chromium (/usr/bin/chromium) with Playwright, as
tests/tracking/test_ui_in_browser.py does. Writes into docs/images/:

    ui-parent-run.png   the sweep's parent run page
    ui-runs-table.png   the experiment's runs table, the sweep's trials expanded
    gallery.png         the champion's validation gallery (copied from its artifacts)
    pareto.png          val mIoU against latency (copied from the parent run's artifacts)

With --own-search it runs examples/track_your_own_search.py instead (a user's own Keras
Tuner search, tracked by `TrackedTuner`) and writes the pictures of
docs/track-your-own-search.md:

    own-search-runs.png     the runs table, the search's parent run expanded over its trials
    own-search-parent.png   the parent run's page: its description and params
    own-search-trial.png    the champion trial's model metrics (its per-epoch curves)
    own-search-version.png  the registered version page of digits-classifier@champion

Each PNG is kept under 300 KB (palette-quantised when larger). Run from the project folder:

    nice -n 10 .venv/bin/python docs/screenshots.py [--tiny | --own-search] [--keep] [--store FOLDER]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, cast

from PIL import Image

if TYPE_CHECKING:
    from playwright.sync_api import ViewportSize

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
EXPERIMENT = ROOT / "experiments" / "quick.yaml"
OWN_SEARCH = ROOT / "examples" / "track_your_own_search.py"
OWN_EXPERIMENT, OWN_REGISTRY = "digits-search", "digits-classifier"  # as the example names them
TINY = ["tuner.max_trials=2", "train.epochs=2", "data.synthetic_count=200"]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAX_BYTES = 300_000
UI_START_S = 120
FIRST_LOAD_MS = 120_000  # MLflow's 4 MB bundle parses slowly on 2 busy cores
SETTLE_MS = 2_500  # charts and tables draw after the data arrives
VIEWPORT = {"width": 1680, "height": 900}
TABLE_HEIGHT = 520  # the runs table's rows, without the empty page below


# This checkout's petloc, whatever the virtualenv has installed
PETLOC = [sys.executable, "-m", "petloc"]
sys.path.insert(0, str(ROOT))


def petloc_env() -> dict:
    """Without MLFLOW_TRACKING_URI (petloc then uses its folder's mlruns/), this checkout first."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_in(folder: Path, cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=folder, env=petloc_env(), check=True)


def wait_until_answering(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + UI_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"petloc ui exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"petloc ui did not answer at {url} in {UI_START_S} s")


def save_small(png: bytes, out: Path) -> None:
    """Writes `png` to `out`, palette-quantised (then halved) until it is under MAX_BYTES."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    data = png
    while len(data) > MAX_BYTES:
        buffer = io.BytesIO()
        image.quantize(colors=128).save(buffer, format="PNG", optimize=True)
        data = buffer.getvalue()
        image = image.resize(
            (image.width * 3 // 4, image.height * 3 // 4), Image.Resampling.LANCZOS
        )
    out.write_bytes(data)
    print(f"wrote {out.relative_to(ROOT)} ({len(data) // 1000} KB)", flush=True)


def find_artifact(client, run_id: str, filename: str, folder: str = "") -> str | None:
    """The artifact path of the first `filename` under `folder` of a run, depth first."""
    for item in client.list_artifacts(run_id, folder or None):
        if item.is_dir:
            found = find_artifact(client, run_id, filename, item.path)
            if found:
                return found
        elif Path(item.path).name == filename:
            return item.path
    return None


def copy_artifact(client, run_id: str, filename: str, out: Path, scratch: Path) -> None:
    path = find_artifact(client, run_id, filename)
    if path is None:
        print(f"no {filename} among the artifacts of run {run_id}: left as it was", flush=True)
        return
    local = client.download_artifacts(run_id, path, str(scratch))
    save_small(Path(local).read_bytes(), out)


METRIC_COLUMNS = (
    "best_val_miou",
    "val_accuracy",
    "latency_ms_b1",
)  # the runs table's extra columns
OWN_METRIC_COLUMNS = ("val_accuracy", "latency_ms_b1")


def best_effort(what: str, action) -> None:
    """Tidies a page (a panel closed, a column added); MLflow's UI moves, so a miss is a line."""
    try:
        action()
    except Exception as err:  # noqa: BLE001 - any Playwright miss only leaves the picture untidy
        print(f"could not {what}: {str(err).splitlines()[0]}", flush=True)


def shoot(
    page, url: str, out: Path, ready, height: int | None = None, tall: int | None = None
) -> None:
    """The page at `url` once `ready()` returns; its top `height` pixels when given. `tall`:
    a window that many pixels high for this page (MLflow scrolls inside its pages, so a
    full-page screenshot shows no more than the window)."""
    page.set_viewport_size({"width": VIEWPORT["width"], "height": tall or VIEWPORT["height"]})
    page.goto(url, timeout=FIRST_LOAD_MS)
    ready()
    page.wait_for_timeout(SETTLE_MS)
    clip = {"x": 0, "y": 0, "width": VIEWPORT["width"], "height": height} if height else None
    save_small(page.screenshot(clip=clip), out)


# MLflow's assistant panel opens by itself on a first visit; the browser keeps it shut after.
NO_ASSISTANT = (
    "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
    "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
)
MODEL_TRAINING_VIEW = "workflowType=machine_learning"  # not MLflow's GenAI pages


def add_metric_columns(page, metrics: tuple[str, ...]) -> None:
    for metric in metrics:

        def add(metric=metric):
            page.get_by_role("button", name="Columns", exact=True).first.click(timeout=10_000)
            page.get_by_role("dialog").get_by_text(metric, exact=True).click(timeout=10_000)
            page.keyboard.press("Escape")

        best_effort(f"add the column {metric}", add)


def expanded_table(page, parent_name: str, metrics: tuple[str, ...]) -> None:
    """The runs table once it lists the parent run: that row expanded over its trials, the
    `metrics` columns added."""
    from playwright.sync_api import expect

    expect(page.get_by_role("link", name=parent_name, exact=True)).to_be_visible()
    toggle = page.get_by_role("gridcell", name=parent_name).get_by_role("button")
    best_effort("expand the parent run's row", lambda: toggle.first.click(timeout=10_000))
    add_metric_columns(page, metrics)


def unfolded_description(page, run_name: str) -> None:
    """A run's page once it shows, its description unfolded (MLflow folds a long one)."""
    from playwright.sync_api import expect

    expect(page.get_by_role("heading", name=run_name)).to_be_visible()
    more = page.get_by_text("Show more", exact=True)
    best_effort("unfold the description", lambda: more.first.click(timeout=10_000))


@contextlib.contextmanager
def browser_page():
    """A headless Chromium tab set up as a first-time visitor's, MLflow's pop-ups kept shut."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=cast("ViewportSize", VIEWPORT))
        context.set_default_timeout(FIRST_LOAD_MS)
        expect.set_options(timeout=FIRST_LOAD_MS)
        context.add_init_script(NO_ASSISTANT)
        page = context.new_page()
        # MLflow's modal about its "new Model Registry UI" on a first visit
        promo = page.get_by_role("dialog", name=re.compile("new Model Registry UI"))
        page.add_locator_handler(promo, lambda d: d.get_by_role("button", name="Close").click())
        try:
            yield page
        finally:
            context.close()
            browser.close()


def runs_url(ui: str, experiment_id: str, run_id: str = "") -> str:
    run = f"/{run_id}" if run_id else ""
    return f"{ui}/#/experiments/{experiment_id}/runs{run}?{MODEL_TRAINING_VIEW}"


def screenshots(ui: str, experiment_id: str, parent) -> None:
    with browser_page() as page:
        shoot(
            page,
            runs_url(ui, experiment_id),
            IMAGES / "ui-runs-table.png",
            lambda: expanded_table(page, parent.info.run_name, METRIC_COLUMNS),
            TABLE_HEIGHT,
        )
        shoot(
            page,
            runs_url(ui, experiment_id, parent.info.run_id),
            IMAGES / "ui-parent-run.png",
            lambda: unfolded_description(page, parent.info.run_name),
        )


def own_search_screenshots(ui: str, experiment_id: str, parent, trial, version) -> None:
    """The pages of docs/track-your-own-search.md: the runs table, the parent run, the
    champion trial's curves and its registered version."""
    from playwright.sync_api import expect

    with browser_page() as page:
        shoot(
            page,
            runs_url(ui, experiment_id),
            IMAGES / "own-search-runs.png",
            lambda: expanded_table(page, parent.info.run_name, OWN_METRIC_COLUMNS),
            TABLE_HEIGHT,
        )
        shoot(
            page,
            runs_url(ui, experiment_id, parent.info.run_id),
            IMAGES / "own-search-parent.png",
            lambda: unfolded_description(page, parent.info.run_name),
            tall=1100,  # the space's params are below the tuner's
        )
        trial_url = f"{ui}/#/experiments/{experiment_id}/runs/{trial.info.run_id}/model-metrics"
        shoot(
            page,
            f"{trial_url}?{MODEL_TRAINING_VIEW}",
            IMAGES / "own-search-trial.png",
            lambda: expect(page.get_by_role("heading", name=trial.info.run_name)).to_be_visible(),
            tall=1060,  # the val/ curves below the train/ ones
        )
        shoot(
            page,
            f"{ui}/#/models/{OWN_REGISTRY}/versions/{version.version}?{MODEL_TRAINING_VIEW}",
            IMAGES / "own-search-version.png",
            lambda: expect(
                page.get_by_role("heading", name=f"Version {version.version}")
            ).to_be_visible(),
            tall=1000,  # its schema (the signature) below its tags
        )


@contextlib.contextmanager
def petloc_ui(folder: Path):
    """`petloc ui` on the folder's store, on a free port: its address."""
    port = free_port()
    ui = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [*PETLOC, "ui", "--port", str(port)],
        cwd=folder,
        env=petloc_env(),
        stdout=(folder / "ui.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_answering(ui + "/", proc)
        yield ui
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)


def parent_run(client, experiment):
    """The latest search's parent run in `experiment`."""
    from petloc.tracking import vocabulary as vocab

    [parent] = client.search_runs(
        [experiment.experiment_id],
        f"tags.`{vocab.KIND}` = '{vocab.SWEEP_KIND}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return parent


def sweep_pictures(folder: Path, client) -> None:
    """The quick sweep's pictures (README.md, the tour)."""
    from petloc.config import load_experiment

    exp = load_experiment(EXPERIMENT)
    experiment = client.get_experiment_by_name(exp.tracking.experiment)
    parent = parent_run(client, experiment)
    champion = client.get_model_version_by_alias(exp.registry.name, exp.registry.alias)
    scratch = folder / "downloads"
    scratch.mkdir(exist_ok=True)
    copy_artifact(client, champion.run_id, "val_gallery.png", IMAGES / "gallery.png", scratch)
    copy_artifact(client, parent.info.run_id, "pareto.png", IMAGES / "pareto.png", scratch)
    with petloc_ui(folder) as ui:
        screenshots(ui, experiment.experiment_id, parent)


def own_search_pictures(folder: Path, client) -> None:
    """The example's pictures (docs/track-your-own-search.md)."""
    experiment = client.get_experiment_by_name(OWN_EXPERIMENT)
    parent = parent_run(client, experiment)
    version = client.get_model_version_by_alias(OWN_REGISTRY, "champion")
    with petloc_ui(folder) as ui:
        own_search_screenshots(
            ui, experiment.experiment_id, parent, client.get_run(version.run_id), version
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--tiny", action="store_true", help="2 short trials, not the quick sweep")
    which.add_argument(
        "--own-search", action="store_true", help="examples/track_your_own_search.py's pictures"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--store", type=Path, help="a folder where it already ran: no run")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit(f"{CHROMIUM} is missing: apt-get install chromium")
    IMAGES.mkdir(parents=True, exist_ok=True)
    folder = (
        args.store.resolve() if args.store else Path(tempfile.mkdtemp(prefix="petloc-screenshots-"))
    )
    try:
        if not args.store and args.own_search:
            run_in(folder, [sys.executable, str(OWN_SEARCH)])
        elif not args.store:
            run_in(folder, [*PETLOC, "sweep", str(EXPERIMENT), *(TINY if args.tiny else [])])
        os.chdir(folder)  # the store petloc made: ./mlruns
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        from mlflow.tracking import MlflowClient

        uri = f"sqlite:///{folder}/mlruns/mlflow.db"
        client = MlflowClient(uri, registry_uri=uri)
        (own_search_pictures if args.own_search else sweep_pictures)(folder, client)
    finally:
        if args.keep or args.store:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
