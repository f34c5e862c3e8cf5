"""Experiment files: what is accepted, and the one-line errors for what is not."""

from pathlib import Path

import pytest

from petloc.config import Range, load_experiment, parse_experiment
from petloc.errors import PetlocError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_experiment_files_are_valid(path):
    exp = load_experiment(path)
    assert exp.fixed_hyperparameters()["backbone"]


def test_choices_ranges_and_fixed_values():
    exp = parse_experiment(
        {
            "space": {
                "backbone": ["simple", "mobilenetv2"],
                "learning_rate": {"min": 1e-4, "max": 3e-3, "sampling": "log"},
                "head_units": 64,
                "dropout": 0,
            }
        }
    )
    assert exp.space["backbone"] == ["simple", "mobilenetv2"]
    assert (
        isinstance(exp.space["learning_rate"], Range)
        and exp.space["learning_rate"].sampling == "log"
    )
    hp = exp.fixed_hyperparameters()
    assert hp["backbone"] == "simple" and hp["learning_rate"] == 1e-4 and hp["head_units"] == 64
    assert hp["dropout"] == 0.0 and isinstance(hp["dropout"], float)
    assert hp["image_size"] == exp.data.image_size


@pytest.mark.parametrize(
    "text, message",
    [
        ("dta:\n  path: x\n", r"exp.yaml: dta: not a key; did you mean data\?$"),
        (
            "data:\n  image_sise: 64\n",
            r"data.image_sise: not a key; did you mean data.image_size\?$",
        ),
        ("data:\n  image_size: big\n", r"data.image_size: .*integer"),
        ("space:\n  backbone: []\n", r"space: .*backbone: empty list of choices"),
        (
            "space:\n  learning_rate: {min: 0.1, max: 0.01}\n",
            r"space.learning_rate.*min 0.1 is greater than max 0.01",
        ),
        # a typo gets a suggestion, in every section and in the space
        (
            "space:\n  head_unit: 64\n",
            r"hyperparameter 'head_unit'; did you mean space.head_units\?$",
        ),
        (
            "space:\n  backbone: mobilnet\n",
            r"space: backbone: unknown backbone 'mobilnet'; did you mean mobilenetv2\? choose from ",
        ),
        ("tuner:\n  kind: bayesain\n", r"tuner.kind: Input should be .*; did you mean bayesian\?$"),
        ("registry:\n  nmae: x\n", r"registry.nmae: not a key; did you mean registry.name\?$"),
        (
            "space:\n  learning_rate: {min: 0.1, max: 1, sampl: log}\n",
            r"did you mean space.learning_rate.sampling\?",
        ),
        # a typo inside a range: the range's keys, and only the user's own mistakes counted
        (
            "space:\n  learning_rate: {min: 0.001, maxx: 0.01}\n",
            r"exp.yaml: space.learning_rate.maxx: not a key; did you mean space.learning_rate.max\?$",
        ),
        (
            "space:\n  learning_rate: {min: 0.001, max: 0.01, lg: true}\n",
            r"space.learning_rate.lg: not a key; known: min, max, step, sampling, default$",
        ),
        (
            "space:\n  learning_rate: {min: [1], mx: 0.01}\n",
            r"space.learning_rate.mx: not a key; did you mean space.learning_rate.max\? \(and 1 more\)$",
        ),
        ("data:\n  colour: red\n", r"data.colour: not a key; known: path, image_size, "),
        ("space:\n  head_units: [64, wide]\n", r"head_units: 'wide' is not an integer"),
        (
            "tuner:\n  kind: annealing\n",
            r"tuner.kind: Input should be 'random', 'bayesian', 'grid' or 'hyperband'",
        ),
        (
            "train:\n  precision: mixed_float16\n",
            r"exp.yaml: train.precision: Input should be 'auto', 'float32' or 'mixed_bfloat16'",
        ),
        ("data: [1, 2\n", r"exp.yaml: not valid YAML at line"),
        ("- a\n- b\n", r"expected a mapping"),
        (
            "train:\n  xla: true\nspace:\n  second_stage: [none, head_crop]\n",
            r"exp.yaml: train.xla: XLA cannot compile second_stage head_crop",
        ),
    ],
)
def test_bad_files_get_one_line_naming_the_key(tmp_path, text, message):
    with pytest.raises(PetlocError, match=message) as err:
        load_experiment(write(tmp_path, text))
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(PetlocError, match="no such experiment file"):
        load_experiment(tmp_path / "nope.yaml")


def test_a_mistyped_file_name_gets_a_suggestion(tmp_path, monkeypatch):
    """From the folder's files, and for a bare or `experiments/` name from petloc's own."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("name: mine\n")
    with pytest.raises(
        PetlocError, match=r"^qick.yaml: no such experiment file; did you mean quick.yaml\?$"
    ):
        load_experiment("qick.yaml")
    with pytest.raises(PetlocError, match=r"did you mean experiments/cats_dogs.yaml\?$"):
        load_experiment("experiments/cats_dog.yaml")
    with pytest.raises(
        PetlocError, match=r"^mien.yaml: no such experiment file; did you mean mine.yaml\?$"
    ):
        load_experiment("mien.yaml")


def test_overrides_are_typed_and_reach_nested_keys(tmp_path):
    path = write(tmp_path, "tuner:\n  max_trials: 6\n")
    exp = load_experiment(
        path, ["tuner.max_trials=4", "space.backbone=[simple, vgg16]", "data.path=../photos"]
    )
    assert exp.tuner.max_trials == 4
    assert exp.space["backbone"] == ["simple", "vgg16"]
    assert exp.data.path == "../photos"


@pytest.mark.parametrize(
    "override, message",
    [("tuner.max_trials", "expected key=value"), ("tuner.maxtrials=4", "tuner.maxtrials")],
)
def test_bad_overrides(tmp_path, override, message):
    with pytest.raises(PetlocError, match=message):
        load_experiment(write(tmp_path, "{}\n"), [override])


@pytest.mark.parametrize(
    "space, message",
    [
        (
            {"backbone": ["simple", "resnet18"]},
            r"backbone: unknown backbone 'resnet18'; did you mean resnet50\? choose from efficientnetb0, ",
        ),
        (
            {"box_loss": "iou"},
            r"box_loss: unknown box loss 'iou'; did you mean giou\? choose from giou, l1, l1_giou, mse, ",
        ),
    ],
)
def test_registry_names_are_checked(space, message):
    with pytest.raises(PetlocError, match=message):
        parse_experiment({"space": space})


def test_exponent_floats_read_as_numbers(tmp_path):
    exp = load_experiment(
        write(tmp_path, "space:\n  learning_rate: [1e-3, 3e-4]\n"), ["space.box_loss_weight=5e0"]
    )
    assert exp.space["learning_rate"] == [1e-3, 3e-4] and exp.space["box_loss_weight"] == 5.0


@pytest.mark.parametrize(
    "space, message",
    [
        ({"image_size": [16, 64]}, "image_size: 16 is outside 32..512"),
        (
            {"head_units": {"min": 8, "max": 64, "step": 0.5}},
            "head_units: step 0.5 must be a whole number",
        ),
        (
            {"learning_rate": {"min": 1e-4, "max": 1e-2, "sampling": "log", "step": 0.5}},
            "step is a factor and must be > 1",
        ),
        ({"aug_strength": {"min": 0.0, "max": 2.0}}, "aug_strength: 2.0 is outside 0.0..1.0"),
    ],
)
def test_values_outside_what_can_work(space, message):
    with pytest.raises(PetlocError, match=message):
        parse_experiment({"space": space})


def test_hyperparameters_lists_each_declared_one_with_its_default_and_choices():
    from click.testing import CliRunner

    from petloc.cli import cli
    from petloc.model import BACKBONES, hyperparams

    lines = CliRunner().invoke(cli, ["hyperparameters"], catch_exceptions=False).output.splitlines()
    by_name = {line.split()[0]: line.split() for line in lines[1:]}
    assert list(by_name) == list(hyperparams.DECLARED)
    assert by_name["backbone"][:3] == ["backbone", "str", "simple"] and all(
        b in lines[1] for b in BACKBONES
    )
    assert by_name["image_size"][2] == "data.image_size" and by_name["learning_rate"][2] == "0.001"


@pytest.mark.parametrize(
    "override, message",
    [
        # A typo of many digits once passed the file and ended as a TypeError traceback in training.
        (
            "train.epochs=99999999999999999999999999",
            "train.epochs: Input should be less than or equal to 100000",
        ),
        ("tuner.final_epochs=1e400", "tuner.final_epochs: Input should be a finite number"),
        ("tuner.max_minutes=.inf", "tuner.max_minutes: Input should be a finite number"),
        (
            "registry.max_latency_ms=.nan",
            "registry.max_latency_ms: Input should be a finite number",
        ),
        ("data.seed=-1", "data.seed: Input should be greater than or equal to 0"),
        ("train.seed=4294967296", "train.seed: Input should be less than or equal to 2147483647"),
        (
            "tuner.max_trials=10000000000",
            "tuner.max_trials: Input should be less than or equal to 100000",
        ),
        # MLflow's experiments table holds 256 characters: a longer name failed at train time.
        (
            "tracking.experiment=" + "x" * 600,
            "tracking.experiment: String should have at most 256 characters",
        ),
        (
            'tracking.experiment="two\\nlines"',
            r"tracking.experiment: 'two\\nlines' holds a control character",
        ),
        ('tracking.experiment=""', "tracking.experiment: String should have at least 1 character"),
    ],
)
def test_numbers_and_names_past_what_can_run_are_refused_when_read(tmp_path, override, message):
    with pytest.raises(PetlocError, match=message) as err:
        load_experiment(write(tmp_path, "{}\n"), [override])
    assert "\n" not in str(err.value)


def test_the_largest_accepted_values_still_load(tmp_path):
    exp = load_experiment(
        write(tmp_path, "{}\n"),
        ["train.epochs=100000", "train.seed=2147483647", "tracking.experiment=" + "é" * 256],
    )
    assert exp.train.epochs == 100_000 and len(exp.tracking.experiment) == 256


def test_petlocs_own_experiments_load_by_name_from_any_folder(tmp_path, monkeypatch):
    """After `pip install .` the README's `experiments/quick.yaml` and a bare `quick.yaml` name
    petloc's own example; a file of that name in the folder wins."""
    monkeypatch.chdir(tmp_path)
    assert load_experiment("quick.yaml").name == "quick"
    assert load_experiment("experiments/cats_dogs.yaml").name == "cats_dogs"
    (tmp_path / "quick.yaml").write_text("name: mine\n")
    assert load_experiment("quick.yaml").name == "mine"
    with pytest.raises(PetlocError, match=r"^elsewhere/quick.yaml: no such experiment file$"):
        load_experiment("elsewhere/quick.yaml")
