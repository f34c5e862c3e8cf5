"""What a person sees: the sweep's progress lines, rounded and aligned tables, curves with
points, `--version`, `petloc config`, a quiet terminal, and one registered model per kind of data."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

import petloc
from petloc import report
from petloc.cli import cli
from petloc.config import Experiment, load_experiment, parse_experiment
from petloc.errors import PetlocError
from petloc.quiet import TENSORFLOW_STARTUP_LOG, native_stderr_filtered
from petloc.training.gallery import curves_figure, plot_curves
from petloc.training.progress import EpochLine
from tests.helpers import in_project, parent_id_of, tiny_dataset, tiny_experiment

ROOT = Path(__file__).resolve().parents[2]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def numeric_cells_line_up(lines: list[str]) -> bool:
    """Right-aligned numbers: in every column of numbers the cells end at the same place and
    carry the same count of decimals."""
    ends: dict[int, set[int]] = {}
    for line in lines:
        for cell in re.finditer(r"(?<![\w.])-?\d+(\.\d+)?(?=\s|$)", line):
            ends.setdefault(cell.end(), set()).add(len(cell.group(1) or ""))
    return all(len(decimals) == 1 for decimals in ends.values())


# --- tables (item 10) ---

ROWS = [
    {
        "trial": 0,
        "backbone": "simple",
        "learning_rate": 0.0018852184173460574,
        "best_val_miou": 0.7346,
        "params_count": 8.379e05,
        "latency_ms_b1": 6.612,
        "train_seconds": 12.34,
    },
    {
        "trial": 10,
        "backbone": "mobilenetv2",
        "learning_rate": 0.41,
        "best_val_miou": 0.41,
        "params_count": 1234567.0,
        "latency_ms_b1": 16.6,
        "train_seconds": 123.4,
    },
]


def test_table_rounds_and_right_aligns_numbers():
    text = report.table(ROWS, same_decimals=True)
    assert "0.0018852184173460574" not in text and "e+" not in text
    assert "837900" in text and "1234567" in text
    assert "0.0019" in text and "0.4100" in text  # one column, one count of decimals
    assert "0.735" in text and "0.410" in text  # a quantity's column: its own decimals
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1  # the last column is numbers, right-aligned
    assert numeric_cells_line_up(lines[1:])
    # text left
    assert lines[1].split()[1] == "simple" and lines[0].index("backbone") == lines[1].index(
        "simple"
    )


def test_markdown_table_marks_number_columns_right_aligned():
    _header, rule, *body = report.table(ROWS, markdown=True, same_decimals=True).splitlines()
    assert rule == "|---:|---|---:|---:|---:|---:|---:|"
    assert body[0] == "| 0 | simple | 0.0019 | 0.735 | 837900 | 6.61 | 12 |"


@pytest.mark.parametrize("same_decimals", [False, True])
def test_a_quantity_is_rounded_one_way_in_every_row_and_every_table(same_decimals):
    """`petloc models` showed latency 4.47 in one row and 3.544 in the next."""
    rows = [
        {"best_val_miou": 0.5, "latency_ms_b1": 4.47, "val_accuracy": 1.0, "miou": 0.1234},
        {"best_val_miou": 0.61234, "latency_ms_b1": 3.5441, "val_accuracy": 0.875, "miou": 0.5},
    ]
    lines = report.table(rows, same_decimals=same_decimals).splitlines()
    assert [line.split() for line in lines[1:]] == [
        ["0.500", "4.47", "1.000", "0.123"],
        ["0.612", "3.54", "0.875", "0.500"],
    ]
    assert report.figure("val_top5_accuracy", 0.9) == "0.900"
    assert report.figure("train_seconds", 12.6) == "13"
    # the epoch lines' loss, a prediction's score (as `petloc predict` and the gallery show it)
    assert report.figure("val_loss", 1.5) == "1.500" and report.figure("score", 0.876) == "0.88"
    assert report.figure("learning_rate", 0.00123456) == "0.001235"  # not a quantity


def test_each_cell_keeps_four_significant_digits_in_tables_of_mixed_quantities():
    rows = [
        {"": "image width px", "min": 64.0},
        {"": "box area / image", "min": 0.0625},
        {"": "tiny", "min": 0.0018852184173460574},
    ]
    assert [line.split()[-1] for line in report.table(rows).splitlines()[1:]] == [
        "64",
        "0.0625",
        "0.001885",
    ]


def test_csv_keeps_full_precision():
    assert "0.0018852184173460574" in report.csv_text(ROWS, list(ROWS[0]))


def test_counts_are_whole_numbers_in_every_output():
    """MLflow keeps the parameter count as a float; no table, CSV or JSON says 837900.0.
    Real-valued figures keep their full precision."""
    rows = [*ROWS, {**ROWS[0], "trial": 11, "params_count": ""}]  # a run without the count
    csv_rows = report.csv_text(rows, list(ROWS[0])).splitlines()
    assert csv_rows[1] == "0,simple,0.0018852184173460574,0.7346,837900,6.612,12.34"
    assert csv_rows[3].split(",")[4] == ""
    frame = report.frame(rows, list(ROWS[0]))
    written = json.loads(frame.to_json(orient="split", index=False))
    assert [row[4] for row in written["data"]] == [837900, 1234567, None]
    assert frame["learning_rate"][0] == 0.0018852184173460574 and written["data"][1][6] == 123.4
    assert "837900 |" in report.table(ROWS, markdown=True, same_decimals=True)
    assert "837900.0" not in report.table(ROWS) + report.table(ROWS, same_decimals=True)


# --- curves (item 11) ---


@pytest.mark.parametrize("epochs", [1, 2])
def test_curves_show_every_epoch_as_a_marker(epochs, tmp_path):
    history = {
        key: [0.5] * epochs
        for key in ("loss", "val_loss", "miou", "val_miou", "accuracy", "val_accuracy")
    }
    figure = curves_figure(history)
    lines = [line for axes in figure.axes for line in axes.get_lines()]
    assert len(lines) == 6
    for line in lines:
        assert line.get_marker() not in (None, "", " ", "None") and line.get_markersize() > 0
        assert len(line.get_xdata()) == epochs
    assert plot_curves(history, tmp_path / "curves.png").stat().st_size > 0


# --- epoch lines (item 9) ---


def test_epoch_line_shows_each_metric_once():
    said = []
    line = EpochLine(said.append)
    line.params = {"epochs": 3}
    logs = {
        "loss": 1.23456,
        "box_miou": 0.4,
        "miou": 0.4,
        "cls_accuracy": 0.8,
        "accuracy": 0.8,
        "val_loss": 1.5,
        "val_box_miou": 0.35,
        "val_miou": 0.35,
        "val_cls_accuracy": 0.75,
        "val_accuracy": 0.75,
    }
    line.on_epoch_begin(0)
    line.on_epoch_end(0, logs)
    [text] = said
    assert text.startswith(
        "  epoch 1/3  loss 1.235  miou 0.400  accuracy 0.800 | val loss 1.500  miou 0.350  accuracy 0.750"
    )
    assert "box_miou" not in text and "cls_accuracy" not in text


# --- quiet start-up (item 9) ---

TF_STARTUP = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796181451.037979   27153 port.cc:153] oneDNN custom operations are on.\n"
    "I0000 00:00:1796181451.038289   27153 cudart_stub.cc:31] Could not find cuda drivers on your "
    "machine, GPU will not be used.\n"
    "2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda drivers\n"
)


def test_startup_log_is_dropped_and_everything_else_kept(capfd):
    with native_stderr_filtered(TENSORFLOW_STARTUP_LOG):
        os.write(
            2,
            (
                TF_STARTUP + "E0000 00:00:1796181451.1 27153 x.cc:1] a real error\nsomething else\n"
            ).encode(),
        )
    err = capfd.readouterr().err
    assert err == "E0000 00:00:1796181451.1 27153 x.cc:1] a real error\nsomething else\n"


@pytest.mark.slow
def test_terminal_is_quiet_unless_verbose(tmp_path):
    # `petloc models` imports TensorFlow (the registry loads Keras models); `config` no longer does
    def run(*flags):
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("TF_CPP_MIN_LOG_LEVEL", "MLFLOW_TRACKING_URI")
        }
        return subprocess.run(
            [sys.executable, "-m", "petloc", *flags, "models"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    quiet, verbose = run(), run("--verbose")
    assert quiet.returncode == verbose.returncode == 0
    assert quiet.stderr == ""
    assert "absl::InitializeLog" in verbose.stderr  # TensorFlow's start-up lines are back
    assert quiet.stdout == verbose.stdout


# --- --version and petloc config (item 12) ---


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output == f"petloc {petloc.__version__}\n"


def test_config_prints_the_experiment_that_would_run():
    path = ROOT / "experiments" / "quick.yaml"
    output = invoke("config", path, "tuner.max_trials=3", "train.epochs=2").output
    printed = yaml.safe_load(output)
    exp = load_experiment(path, ["tuner.max_trials=3", "train.epochs=2"])
    assert printed == exp.model_dump(mode="json")
    # a default filled in
    assert printed["tuner"]["max_trials"] == 3 and printed["tracking"]["gallery_images"] == 16
    assert parse_experiment(printed) == exp  # the output is itself the experiment file
    commented = "\n".join(
        line.removeprefix("#   ") for line in output.splitlines() if line.startswith("#   ")
    )
    assert yaml.safe_load(commented) == exp.fixed_hyperparameters()


def test_a_mistyped_choice_on_the_command_line_gets_a_suggestion():
    result = CliRunner().invoke(cli, ["evaluate", "m", "d", "--subset", "vall"])
    assert result.exit_code == 2
    assert "'vall' is not one of 'all', 'train', 'val'; did you mean val?" in result.output


def test_config_errors_are_one_line(tmp_path):
    with pytest.raises(
        PetlocError,
        match=r"quick.yaml: tuner.maxtrials: not a key; did you mean tuner.max_trials\?$",
    ):
        invoke("config", ROOT / "experiments" / "quick.yaml", "tuner.maxtrials=3")
    with pytest.raises(PetlocError, match="no such experiment file"):
        invoke("config", tmp_path / "missing.yaml")


# --- one registered model per kind of data (item 7) ---


def test_each_shipped_experiment_registers_its_own_model():
    names = {
        path.name: load_experiment(path).registry.name
        for path in (ROOT / "experiments").glob("*.yaml")
    }
    assert names == {
        "quick.yaml": "petloc-quick",
        "cats_dogs.yaml": "petloc-cats-dogs",
        "breeds.yaml": "petloc-breeds",
    }
    assert Experiment().registry.name == "petloc"  # an experiment without one: petloc@champion


# --- a real sweep: progress lines, leaderboard, promotion across data (items 7, 8, 10) ---


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_ux")
    with in_project(root):
        data = tiny_dataset(root / "photos")
        exp = tiny_experiment(
            root, data, space={"head_units": [8, 16]}, registry={"name": "tiny-model"}
        )
        result = invoke("sweep", exp)
        assert result.exit_code == 0, result.output
        mlflow.set_tracking_uri(f"sqlite:///{root}/mlruns/mlflow.db")
        yield root, exp, MlflowClient(), result.output


def trial_tags(client, output):
    parent_id = parent_id_of(output)
    parent = client.get_run(parent_id)
    runs = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    return parent_id, {r.data.tags["trial_id"] for r in runs}


@pytest.mark.slow
def test_sweep_prints_each_trial_with_its_figures_time_and_eta(swept):
    _root, _exp, client, output = swept
    # Keras Tuner's own display
    assert "Running Trial" not in output and "Best val_miou So Far" not in output
    assert re.search(r"^trial 0 \(1 of 2\): head_units=\d+$", output, re.M)
    assert re.search(r"^trial 1 \(2 of 2\): head_units=\d+$", output, re.M)
    first = re.search(
        r"^trial 0 done in \d+ s: val mIoU (\d\.\d{3}), accuracy \d\.\d{3}, latency \d+\.\d{2} ms  "
        r"\[sweep: 1 of 2 trials, \d+ s elapsed, about [\w ]+ left\]$",
        output,
        re.M,
    )
    assert first
    assert re.search(
        r"^trial 1 done in \d+ s: .*\[sweep: 2 of 2 trials, \d+ s elapsed\]$", output, re.M
    )
    assert re.search(
        r"^  epoch 1/1  loss \d+\.\d{3}  miou \d\.\d{3}  accuracy \d\.\d{3} \| val loss",
        output,
        re.M,
    )
    assert "box_miou" not in output and "cls_accuracy" not in output
    _, trial_ids = trial_tags(client, output)
    printed = set(re.findall(r"^trial (\d+) done", output, re.M))
    # one numbering: Keras Tuner's trial_id, as the runs' tags
    assert printed == trial_ids == {"0", "1"}


@pytest.mark.slow
def test_sweep_leaderboard_is_rounded_and_aligned_in_terminal_and_markdown(swept):
    root, _exp, client, output = swept
    board = output.split("Leaderboard of sweep")[1].split("\n\n")[0].splitlines()[1:]
    rows = board[1:]  # below the header
    assert len(rows) == 2 and "e+" not in output
    assert numeric_cells_line_up(rows)
    for cell in re.findall(r"\d+\.(\d+)", "\n".join(rows)):
        assert len(cell) <= 6
    # train_seconds right-aligned
    assert rows[0].rstrip().endswith(tuple("0123456789")) and len(rows[0]) == len(rows[1])
    parent_id, _ = trial_tags(client, output)
    markdown = (
        Path(client.download_artifacts(parent_id, "leaderboard.md", str(root)))
        .read_text()
        .splitlines()
    )
    columns = [c.strip() for c in markdown[0].strip("|").split("|")]
    aligns = dict(zip(columns, markdown[1].strip("|").split("|"), strict=True))
    assert aligns["best_val_miou"] == aligns["train_seconds"] == "---:"
    assert aligns["backbone"] == "---"
    for line in markdown[2:]:
        cells = dict(zip(columns, (c.strip() for c in line.strip("|").split("|")), strict=True))
        # mIoU to 3 decimals, as in every table; the parameter count whole
        assert re.fullmatch(r"[01]\.\d{3}", cells["best_val_miou"]) and re.fullmatch(
            r"\d+", cells["params_count"]
        )


@pytest.mark.slow
def test_promotion_never_compares_models_trained_on_other_data(swept, monkeypatch):
    root, exp, client, _output = swept
    monkeypatch.chdir(root)
    champion = client.get_model_version_by_alias("tiny-model", "champion")
    other = tiny_dataset(root / "other-photos", count=40)  # another set of photos
    again = invoke("sweep", exp, f"data.path={other}", "name=tiny-other", "tuner.max_trials=1")
    assert again.exit_code == 0, again.output
    reason = again.output.split("registry: ")[1].splitlines()[0]
    assert "was measured on other validation data" in reason and "--force" in reason
    # kept in the registry, the alias not moved
    assert reason.startswith("registered as version 2;")
    assert client.get_model_version_by_alias("tiny-model", "champion").version == champion.version
    # The same photos and split at another input size compare: the figures answer one question.
    trained = invoke("train", exp, "space.image_size=48")
    run_id = trained.output.split("MLflow run ")[1].split()[0]
    promoted = invoke("promote", run_id, "--name", "tiny-model").output
    assert "other validation data" not in promoted and (
        "beats" in promoted or "does not beat" in promoted or " ties " in promoted
    )


# --- how many trials a sweep plans, for "k of N" and the estimate of the time left (item 8) ---


@pytest.mark.parametrize(
    "kind, space, max_trials, planned",
    [
        ("random", {"head_units": [8, 16]}, 5, 5),
        (
            "grid",
            {"head_units": [8, 16], "dropout": [0.0, 0.1]},
            6,
            4,
        ),  # the grid stops after its 4 combinations
        (
            "grid",
            {
                "learning_rate": {"min": 0.001, "max": 0.004, "step": 2, "sampling": "log"},
                "aug_strength": {"min": 0, "max": 0.6, "step": 0.2},
            },
            99,
            12,
        ),
        ("grid", {"head_units": [8, 16, 32]}, 2, 2),
    ],
)
def test_planned_trials(kind, space, max_trials, planned):
    from petloc.search.progress import planned_trials
    from petloc.search.tuner import ORACLES

    exp = parse_experiment({"space": space, "tuner": {"kind": kind, "max_trials": max_trials}})
    assert planned_trials(exp, ORACLES[kind](exp)) == planned


def test_durations_read_as_people_say_them():
    from petloc.search.progress import duration

    assert [duration(s) for s in (4.4, 59.6, 185, 3725)] == [
        "4 s",
        "1 min 00 s",
        "3 min 05 s",
        "1 h 02 min",
    ]


def test_a_search_that_runs_out_of_points_says_so(tmp_path, monkeypatch):
    """Keras Tuner stops when it cannot draw a new point: 2 combinations, 4 trials planned."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tiny_dataset(tmp_path / "photos", count=24)
    exp = tiny_experiment(tmp_path, data, space={"head_units": [8, 16]}, tuner={"max_trials": 4})
    result = CliRunner().invoke(cli, ["sweep", str(exp)])
    assert result.exit_code == 0, result.output
    assert (
        "the search ended after 2 of 4 planned trials: Keras Tuner drew no new point from the space"
        in result.output
    )


def test_a_failed_trial_is_one_line_without_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tiny_dataset(tmp_path / "photos", count=24)
    exp = tiny_experiment(
        tmp_path,
        data,
        space={"weights": str(tmp_path / "missing.weights.h5"), "head_units": [8, 16]},
        tuner={"max_consecutive_failures": 1, "max_trials": 2},
    )
    result = CliRunner().invoke(cli, ["sweep", str(exp)])
    assert isinstance(result.exception, PetlocError)
    assert re.search(
        r"^trial 0 failed after \d+ s: PetlocError: weights: '.*missing.weights.h5' is neither .*"
        r"\[sweep: 1 of 2 trials, \d+ s elapsed, about \d+ s left\]$",
        result.output,
        re.M,
    )
    assert "Traceback" not in result.output


def _first_draws(seed: int, kind: str, trials: int = 4) -> list[dict]:
    """The values an oracle built from quick.yaml (with tuner.seed=`seed`) hands its first trials."""
    import tempfile

    from petloc.search.tuner import ORACLES, SpaceHyperModel

    exp = load_experiment(ROOT / "experiments" / "quick.yaml", [f"tuner.seed={seed}"])
    oracle = ORACLES[kind](exp)
    oracle._set_project_dir(tempfile.mkdtemp(), "draws")
    space = oracle.get_space()
    SpaceHyperModel(exp).declare_hyperparameters(space)
    oracle.update_space(space)
    draws = []
    for _ in range(trials):
        trial = oracle.create_trial("tuner0")
        draws.append(dict(trial.hyperparameters.values))
        oracle.update_trial(trial.trial_id, {"val_miou": 0.5})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    return draws


@pytest.mark.parametrize("kind", ["random", "bayesian"])
@pytest.mark.parametrize("seed", [0, 7])
def test_a_seeded_sweep_draws_the_same_trials_every_time(seed, kind):
    """Keras Tuner reads seed 0 as 'no seed' (`seed or random.randint(...)`): petloc's files
    say seed: 0, and each sweep drew other trials."""
    assert _first_draws(seed, kind) == _first_draws(seed, kind)
