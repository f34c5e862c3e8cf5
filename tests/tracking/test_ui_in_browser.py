"""`petloc ui` in a real browser: a sweep's runs, metrics and champion as a user sees them.

Runs a tiny sweep, starts the real `petloc ui` (MLflow's UI) on a free port and drives
Debian's headless Chromium with Playwright. Skipped only when /usr/bin/chromium is missing
(`.ci/run` installs it); no Playwright browser download is needed or used.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient
from playwright.sync_api import expect, sync_playwright

from tests.helpers import free_port, invoke, parent_id_of, petloc_env, tiny_dataset, tiny_experiment

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
# Screenshots of the pages a user reads a sweep on, for people to look at: saved in this
# folder when the variable names one.
SHOTS = os.environ.get("PETLOC_UI_SHOTS")
STARTUP_S = 90  # generous: the machine may be busy with the sweep the fixture just ran
TIMEOUT_MS = 30_000  # for clicks and expect()
FIRST_LOAD_MS = 90_000  # parsing MLflow's 4 MB bundle took 5-35 s on a busy 2-CPU machine

pytestmark = [
    pytest.mark.slow,
    pytest.mark.ui,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)",
    ),
]


def petloc_command() -> str:
    beside = Path(sys.executable).with_name("petloc")
    return str(beside) if beside.exists() else shutil.which("petloc") or "petloc"


def signal_group(proc: subprocess.Popen, sig: int, grace: float) -> bool:
    """Sends `sig` to the process group of `proc`; True once the whole group is gone (within `grace` s)."""
    deadline = time.monotonic() + grace
    try:
        os.killpg(proc.pid, sig)
        while time.monotonic() < deadline:
            proc.poll()  # reap the group leader so it does not linger as a zombie
            os.killpg(proc.pid, 0)
            time.sleep(0.2)
    except ProcessLookupError:
        return True
    return False


def stop(proc: subprocess.Popen) -> None:
    """Stops the UI's whole process group (MLflow and its uvicorn worker)."""
    if not signal_group(proc, signal.SIGTERM, 15):
        signal_group(proc, signal.SIGKILL, 5)


def wait_until_answering(url: str, proc: subprocess.Popen, log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"petloc ui exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"petloc ui did not answer at {url} in {seconds:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """A tiny two-trial sweep and `petloc ui` on it; the UI boots while the sweep trains."""
    root = tmp_path_factory.mktemp("ui")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "ui.log"
    proc = None
    with pytest.MonkeyPatch.context() as mp, open(log, "w") as log_file:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        try:
            data = tiny_dataset(root / "photos")
            exp = tiny_experiment(root, data, space={"head_units": [8, 16]})
            # Create the store before the UI opens it, so the two never race to migrate an empty database.
            uri = f"sqlite:///{root}/mlruns/mlflow.db"
            (root / "mlruns").mkdir()
            MlflowClient(uri).search_experiments()
            proc = subprocess.Popen(
                [petloc_command(), "ui", "--port", str(port)],
                cwd=root,
                env=petloc_env(),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            result = invoke("sweep", exp)
            assert result.exit_code == 0, result.output
            parent_id = parent_id_of(result.output)
            client = MlflowClient(uri, registry_uri=uri)
            parent = client.get_run(parent_id)
            trials = client.search_runs(
                [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
            )
            champion = client.get_model_version_by_alias("petloc", "champion")
            [logged_model] = client.search_logged_models(
                [parent.info.experiment_id], f"source_run_id = '{champion.run_id}'"
            )
            wait_until_answering(url + "/", proc, log, STARTUP_S)
            yield SimpleNamespace(
                url=url,
                proc=proc,
                experiment_id=parent.info.experiment_id,
                parent=parent,
                trials=trials,
                champion=champion,
                champion_run=client.get_run(champion.run_id),
                logged_model=logged_model,
                root=root,
            )
        finally:
            if proc is not None:
                stop(proc)


@pytest.fixture(scope="module")
def tab(app, tmp_path_factory):
    """One Chromium tab on the UI's home page; tests then move between hash routes of one app (no reloads)."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1920, "height": 1080})
        context.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        page = context.new_page()
        # MLflow pops up a modal about the "new Model Registry UI" on a first visit; close it whenever it shows.
        promo = page.get_by_role("dialog", name=re.compile("new Model Registry UI"))
        page.add_locator_handler(
            promo, lambda dialog: dialog.get_by_role("button", name="Close").click()
        )
        try:
            page.goto(app.url + "/", timeout=FIRST_LOAD_MS)
            # The home page's "Recent Experiments" lists the sweep's experiment: the UI reads the project's store.
            expect(page.get_by_role("link", name="tiny", exact=True)).to_be_visible(
                timeout=FIRST_LOAD_MS
            )
        except Exception:
            shot = tmp_path_factory.mktemp("ui-failure") / "home.png"
            page.screenshot(path=shot, full_page=True)
            print(f"screenshot of {page.url} at failure: {shot}")
            raise
        yield page
        context.close()
        browser.close()


@pytest.fixture
def page(tab, request, tmp_path):
    """The tab, screenshotted to tmp_path/failure.png when the test fails."""
    failed_before = request.session.testsfailed
    yield tab
    if request.session.testsfailed > failed_before:
        shot = tmp_path / "failure.png"
        tab.screenshot(path=shot, full_page=True)
        print(f"screenshot of {tab.url} at failure: {shot}")


def shot(page, name: str) -> None:
    """The page as a PNG in $PETLOC_UI_SHOTS, when set."""
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        # MLflow opens its assistant's chat beside each page; closed, the page shows whole.
        assistant = page.locator("button[aria-label='New Chat'] ~ button[aria-label='Close']")
        if assistant.count():
            assistant.first.click()
        page.screenshot(path=Path(SHOTS) / f"{name}.png", full_page=True)


def metric_cell(page, run_id: str, metric: str):
    """The runs table's cell of `metric` in the row of `run_id` (ag-grid keeps the run id on the row)."""
    return page.locator(f'[role="row"][row-id="{run_id}"] [role="gridcell"][col-id*="{metric}"]')


def test_experiment_page_nests_the_trials_under_the_sweep_run_and_shows_their_metric(app, page):
    page.goto(f"{app.url}/#/experiments/{app.experiment_id}/runs")
    expect(page.get_by_role("link", name="sweep-tiny", exact=True)).to_be_visible()
    # runs' links only: the Models column links each trial's logged model, named like its run
    trial_links = page.locator("a[href*='/runs/']").filter(has_text=re.compile(r"^trial-"))
    expect(trial_links).to_have_count(0)  # collapsed: trials are not top-level rows
    expect(page.get_by_text(f"{1 + len(app.trials)} matching runs")).to_be_visible()

    # the parent's expand toggle
    page.get_by_role("gridcell", name="sweep-tiny").get_by_role("button").click()
    names = sorted(t.info.run_name for t in app.trials)
    assert len(names) == 2 and all(n.startswith("trial-") for n in names)
    expect(trial_links).to_have_count(len(names))
    assert sorted(trial_links.all_inner_texts()) == names

    # Metric columns are hidden by default; a user adds one from the "Columns" picker.
    page.get_by_role("button", name="Columns").click()
    page.get_by_role("dialog").get_by_text("best_val_miou", exact=True).click()
    page.keyboard.press("Escape")
    header = page.get_by_role("columnheader", name="best_val_miou", exact=True).last
    header.scroll_into_view_if_needed()
    expect(header).to_be_visible()
    for run in (app.parent, *app.trials):
        cell = metric_cell(page, run.info.run_id, "best_val_miou")
        expect(cell).to_have_text(re.compile(r"\d"))
        assert float(cell.inner_text()) == pytest.approx(run.data.metrics["best_val_miou"]), (
            run.info.run_name
        )


def test_champion_trial_page_shows_metrics_parent_run_and_registered_model(app, page):
    run = app.champion_run
    page.goto(f"{app.url}/#/experiments/{app.experiment_id}/runs/{run.info.run_id}")
    expect(page.get_by_role("heading", name=run.info.run_name)).to_be_visible()
    for metric in ("best_val_miou", "val_accuracy", "latency_ms_b1"):
        row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=metric, exact=True))
        value = row.get_by_role("cell").nth(1)
        expect(value).to_have_text(re.compile(r"\d"))
        assert float(value.inner_text()) == pytest.approx(run.data.metrics[metric]), metric
    expect(page.get_by_role("link", name="sweep-tiny", exact=True)).to_be_visible()  # "Parent run"
    # "Registered models" (and the logged model's versions)
    expect(page.get_by_role("link", name="petloc", exact=True).first).to_be_visible()


def test_models_page_shows_petloc_with_the_champion_alias(app, page):
    version = app.champion.version
    page.goto(f"{app.url}/#/models")
    expect(page.get_by_role("heading", name="Registered Models")).to_be_visible()
    listed = page.get_by_role("row").filter(has=page.get_by_role("link", name="petloc", exact=True))
    expect(listed).to_be_visible()
    expect(listed.get_by_role("status", name="champion", exact=True)).to_be_visible()
    expect(
        listed.get_by_role("link", name=re.compile(rf"champion\s*:\s*Version {version}$"))
    ).to_be_visible()

    listed.get_by_role("link", name="petloc", exact=True).click()
    expect(page.get_by_role("heading", name="petloc", exact=True)).to_be_visible()
    row = page.get_by_role("row").filter(
        has=page.get_by_role("link", name=f"Version {version}", exact=True)
    )
    # exact: the version also carries the tag promoted_to_champion (how racing promotions settle)
    expect(row.get_by_role("status", name="champion", exact=True)).to_be_visible()
    expect(row.get_by_role("status", name="source_run")).to_contain_text(app.champion.run_id)


def test_the_parent_runs_description_is_the_leaderboard_linked_to_the_trials_and_the_version(
    app, page
):
    parent = app.parent.info.run_id
    page.goto(f"{app.url}/#/experiments/{app.experiment_id}/runs/{parent}")
    expect(page.get_by_role("heading", name="sweep-tiny")).to_be_visible()
    more = page.get_by_text("Show more", exact=True)  # MLflow folds a long description
    if more.count():
        more.click()
    description = page.get_by_test_id("note-editor-preview-content")  # MLflow's rendered Markdown
    trial_links = {
        t.info.run_id: description.locator(
            f'a[href="#/experiments/{app.experiment_id}/runs/{t.info.run_id}"]'
        )
        for t in app.trials
    }
    trial_ids = {t.info.run_id: t.data.tags["trial_id"] for t in app.trials}
    for trial, link in trial_links.items():
        expect(link).to_be_visible()
        # the link is in the leaderboard's row, among the trial's figures
        cells = link.locator("xpath=ancestor::tr").get_by_role("cell")
        expect(cells.first).to_have_text(trial_ids[trial])
    expect(description.get_by_role("columnheader", name="head_units", exact=True)).to_be_visible()
    version = description.locator(f'a[href="#/models/petloc/versions/{app.champion.version}"]')
    expect(version).to_have_text(f"petloc version {app.champion.version}")
    shot(page, "parent_run_overview")

    # A trial's link opens its run (in a new tab, as MLflow opens a description's links).
    best = app.champion_run
    with page.context.expect_page() as opened:
        trial_links[best.info.run_id].click()
    trial_page = opened.value
    try:
        expect(trial_page.get_by_role("heading", name=best.info.run_name)).to_be_visible(
            timeout=FIRST_LOAD_MS
        )
        assert trial_page.url.endswith(
            f"/#/experiments/{app.experiment_id}/runs/{best.info.run_id}"
        )
    finally:
        trial_page.close()
    with page.context.expect_page() as opened:
        version.click()
    version_page = opened.value
    try:
        expect(
            version_page.get_by_role("heading", name=f"Version {app.champion.version}")
        ).to_be_visible(timeout=FIRST_LOAD_MS)
    finally:
        version_page.close()


def test_the_parallel_coordinates_page_opens_in_the_artifacts_view(app, page):
    parent = app.parent.info.run_id
    page.goto(f"{app.url}/#/experiments/{app.experiment_id}/runs/{parent}")
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("parallel_coordinates.html", exact=True).click()
    plot = page.frame_locator("iframe").first
    # Plotly's axes, drawn offline from the page's own inlined script
    expect(plot.get_by_text("head_units", exact=True).first).to_be_visible()
    expect(plot.get_by_text("val mIoU", exact=True).first).to_be_visible()
    shot(page, "parent_run_parallel_coordinates")


def test_the_champions_logged_model_page_shows_its_registered_version(app, page):
    model = app.logged_model
    page.goto(f"{app.url}/#/experiments/{app.experiment_id}/models/{model.model_id}")
    expect(page.get_by_role("heading", name=model.name).first).to_be_visible()
    page.wait_for_timeout(2000)  # the versions load after the model itself
    shot(page, "champion_logged_model")
    expect(page.get_by_text("Not registered", exact=True)).to_have_count(0)
    expect(
        page.locator(f'a[href*="/models/petloc/versions/{app.champion.version}"]').first
    ).to_be_visible()


def test_the_pages_petloc_ui_prints_show_the_experiments_runs_not_mlflows_genai_pages(
    app, page, tmp_path
):
    """A second `petloc ui` on the store the sweep filled: what it prints is where a user lands."""
    port, log = free_port(), tmp_path / "second-ui.log"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [petloc_command(), "ui", "--port", str(port)],
            cwd=app.root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_answering(url + "/", proc, log, STARTUP_S)
        printed = log.read_text()
        runs_page = f"{url}/#/experiments/{app.experiment_id}/runs?workflowType=machine_learning"
        assert f"runs of tiny    {runs_page}" in printed, printed
        assert f"experiments    {url}/#/experiments" in printed, printed

        page.goto(runs_page, timeout=FIRST_LOAD_MS)  # another port: a new origin, as a first visit
        expect(page.get_by_role("link", name="sweep-tiny", exact=True)).to_be_visible(
            timeout=FIRST_LOAD_MS
        )
        expect(page.get_by_text(f"{1 + len(app.trials)} matching runs")).to_be_visible()
        # the "Model training" sidebar
        expect(page.get_by_role("link", name="Model registry")).to_be_visible()
        expect(page.get_by_role("link", name="Judges")).to_have_count(0)  # not the GenAI one

        # The experiments list as MLflow shows it; "Model training" chosen once, the browser keeps it
        # (a reload too) and an experiment opens on its runs.
        page.goto(f"{url}/#/experiments")
        page.get_by_role("button", name="Model training", exact=True).click()
        expect(page.get_by_role("link", name="Model registry")).to_be_visible()
        page.reload()
        experiment = page.get_by_role("link", name="tiny", exact=True)
        expect(experiment).to_be_visible()
        experiment.click()
        expect(page.get_by_role("link", name="sweep-tiny", exact=True)).to_be_visible()
        assert (
            f"/experiments/{app.experiment_id}/runs" in page.url
            and "workflowType=machine_learning" in page.url
        )
    finally:
        stop(proc)


def test_sigterm_to_petloc_ui_stops_its_server_too(app):
    """Last in this file: it stops the UI. Only petloc gets the signal, not its process group."""
    app.proc.send_signal(signal.SIGTERM)
    assert app.proc.wait(timeout=60) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(app.url + "/", timeout=2).close()
        except OSError:  # refused: nothing listens on the port any more
            return
        time.sleep(1)
    pytest.fail(f"the MLflow server still answers at {app.url} after petloc ui was terminated")
