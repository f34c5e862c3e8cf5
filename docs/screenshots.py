"""The pictures in README.md and docs/: what `make run` makes, as a user sees it.

From a clean store in a scratch folder, runs the quick sweep (`experiments/quick.yaml`, as
`make run` does; `--tiny` runs 2 short trials instead), starts `petloc ui` on a free port and
drives Debian's headless Chromium (/usr/bin/chromium) with Playwright, as
tests/tracking/test_ui_in_browser.py does. Writes into docs/images/:

    ui-parent-run.png   the sweep's parent run page
    ui-runs-table.png   the experiment's runs table, the sweep's trials expanded
    gallery.png         the champion's validation gallery (copied from its artifacts)
    pareto.png          val mIoU against latency (copied from the parent run's artifacts)

Each PNG is kept under 300 KB (palette-quantised when larger). Run from the project folder:

    nice -n 10 .venv/bin/python docs/screenshots.py [--tiny] [--keep] [--store FOLDER]
"""

from __future__ import annotations

import argparse
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

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
EXPERIMENT = ROOT / "experiments" / "quick.yaml"
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


def run_sweep(folder: Path, overrides: list[str]) -> None:
    cmd = [*PETLOC, "sweep", str(EXPERIMENT), *overrides]
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
        image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)
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


def best_effort(what: str, action) -> None:
    """Tidies a page (a panel closed, a column added); MLflow's UI moves, so a miss is a line."""
    try:
        action()
    except Exception as err:  # noqa: BLE001 - any Playwright miss only leaves the picture untidy
        print(f"could not {what}: {str(err).splitlines()[0]}", flush=True)


def shoot(page, url: str, out: Path, ready, height: int | None = None) -> None:
    """The page at `url` once `ready()` returns; its top `height` pixels when given."""
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


def add_metric_columns(page) -> None:
    for metric in METRIC_COLUMNS:

        def add(metric=metric):
            page.get_by_role("button", name="Columns", exact=True).first.click(timeout=10_000)
            page.get_by_role("dialog").get_by_text(metric, exact=True).click(timeout=10_000)
            page.keyboard.press("Escape")

        best_effort(f"add the column {metric}", add)


def screenshots(ui: str, experiment_id: str, parent, parent_name: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(FIRST_LOAD_MS)
        expect.set_options(timeout=FIRST_LOAD_MS)
        context.add_init_script(NO_ASSISTANT)
        page = context.new_page()
        # MLflow's modal about its "new Model Registry UI" on a first visit
        promo = page.get_by_role("dialog", name=re.compile("new Model Registry UI"))
        page.add_locator_handler(promo, lambda d: d.get_by_role("button", name="Close").click())

        runs = f"{ui}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING_VIEW}"
        parent_link = page.get_by_role("link", name=parent_name, exact=True)

        def expanded_table() -> None:
            expect(parent_link).to_be_visible()
            toggle = page.get_by_role("gridcell", name=parent_name).get_by_role("button")
            best_effort("expand the sweep's row", lambda: toggle.first.click(timeout=10_000))
            add_metric_columns(page)

        def unfolded_description() -> None:
            expect(page.get_by_role("heading", name=parent_name)).to_be_visible()
            # MLflow folds a long description: the leaderboard is what the picture is for
            more = page.get_by_text("Show more", exact=True)
            best_effort("unfold the description", lambda: more.first.click(timeout=10_000))

        shoot(page, runs, IMAGES / "ui-runs-table.png", expanded_table, TABLE_HEIGHT)
        shoot(
            page,
            f"{ui}/#/experiments/{experiment_id}/runs/{parent.info.run_id}?{MODEL_TRAINING_VIEW}",
            IMAGES / "ui-parent-run.png",
            unfolded_description,
        )
        context.close()
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="2 short trials, not the quick sweep")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--store", type=Path, help="a folder where a sweep already ran: no sweep")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit(f"{CHROMIUM} is missing: apt-get install chromium")
    IMAGES.mkdir(parents=True, exist_ok=True)
    folder = (
        args.store.resolve() if args.store else Path(tempfile.mkdtemp(prefix="petloc-screenshots-"))
    )
    ui_proc = None
    try:
        if not args.store:
            run_sweep(folder, TINY if args.tiny else [])
        os.chdir(folder)  # the store petloc made: ./mlruns
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        from mlflow.tracking import MlflowClient

        from petloc.config import load_experiment
        from petloc.tracking import vocabulary as vocab

        exp = load_experiment(EXPERIMENT)
        uri = f"sqlite:///{folder}/mlruns/mlflow.db"
        client = MlflowClient(uri, registry_uri=uri)
        experiment = client.get_experiment_by_name(exp.tracking.experiment)
        [parent] = client.search_runs(
            [experiment.experiment_id],
            f"tags.`{vocab.KIND}` = '{vocab.SWEEP_KIND}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        champion = client.get_model_version_by_alias(exp.registry.name, exp.registry.alias)
        scratch = folder / "downloads"
        scratch.mkdir(exist_ok=True)
        copy_artifact(client, champion.run_id, "val_gallery.png", IMAGES / "gallery.png", scratch)
        copy_artifact(client, parent.info.run_id, "pareto.png", IMAGES / "pareto.png", scratch)

        port = free_port()
        ui = f"http://127.0.0.1:{port}"
        ui_proc = subprocess.Popen(
            [*PETLOC, "ui", "--port", str(port)],
            cwd=folder,
            env=petloc_env(),
            stdout=(folder / "ui.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until_answering(ui + "/", ui_proc)
        screenshots(ui, experiment.experiment_id, parent, parent.info.run_name)
    finally:
        if ui_proc is not None:
            os.killpg(ui_proc.pid, 15)
            ui_proc.wait(timeout=60)
        if args.keep or args.store:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
