"""The registry survives any name: names and aliases are checked before anything is created,
with MLflow's rules; names other tools made (quotes, '%', '_', any letters) are listed and
loaded; no name is ever pasted into a search filter. Also: numbers given to flags are
finite, a corrupt .keras file and a sweep's parent run are each one clear line."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    _validate_model_alias_name,
    _validate_model_alias_name_reserved,
    _validate_model_name,
)

from petloc.config import load_experiment, parse_experiment
from petloc.errors import PetlocError
from petloc.model import Hyperparameters, build_model
from petloc.registry_names import alias_problem, name_problem, parse_ref
from petloc.tracking import log
from petloc.tracking.model_server import served_model
from petloc.tracking.registry import list_versions, load_localiser, versions_of
from petloc.tracking.reproduce import reproduce
from petloc.tracking.store import configure
from tests.helpers import in_project, invoke, jpeg, petloc_env, petloc_process, photo
from tests.servers import tracking_server

SIZE = 32
VAL_DATA = "digest=abc split=0.25 seed=0"

# Registered by other tools straight through MLflow, which allows them all. '_' and '%' are
# LIKE wildcards: "a_b" must not find "axb", nor "100%" find "1000".
OTHER_TOOLS_NAMES = [
    "o'brien",
    'say "hi"',
    "both ' and \"",
    "a_b",
    "axb",
    "100%",
    "1000",
    "ünïcødé 名前",
    "back\\slash\\",
    "esc\\'aped",
    'esc\\"aped',
    "semi;colon -- x",
    "Case",
    "case",
    "at@sign",
    "what?",
    "tab\there",
]


@dataclass
class Store:
    root: Path
    run_id: str
    model_uri: str
    client: MlflowClient

    def names(self) -> set[str]:
        return {m.name for m in self.client.search_registered_models(max_results=1000)}

    def version_count(self) -> int:
        return len(self.client.search_model_versions(max_results=10000))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """A project store with one finished run and its logged localiser (untrained), and that
    model registered under OTHER_TOOLS_NAMES, each with a champion."""
    root = tmp_path_factory.mktemp("registry")
    with in_project(root):
        uri = configure()
        client = MlflowClient(uri, registry_uri=uri)
        run_id = client.create_run(client.create_experiment("names")).info.run_id
        model_uri = log.log_model(
            build_model(Hyperparameters(width=0.25, head_units=8), SIZE), run_id
        )
        client.log_metric(run_id, "best_val_miou", 0.5)
        client.log_metric(run_id, "latency_ms_b1", 3.0)
        client.set_tag(run_id, "val_data", VAL_DATA)
        client.set_terminated(run_id)
        for name in OTHER_TOOLS_NAMES:
            client.create_registered_model(name)
            version = client.create_model_version(
                name, model_uri, run_id=run_id, model_id=model_uri.removeprefix("models:/")
            )
            client.set_registered_model_alias(name, "champion", version.version)
    return Store(root, run_id, model_uri, client)


@pytest.fixture
def project(store):
    with in_project(store.root):
        configure()
        yield store


# ---- names other tools made: listed, loaded, never pasted into a filter ------------------


def test_models_lists_every_name_other_tools_made(project):
    result = invoke("models")
    assert result.exit_code == 0
    listed = {row["name"] for row in list_versions()}
    assert {"o'brien", 'say "hi"', "a_b", "axb", "100%", "ünïcødé 名前", "tab\\there"} <= listed
    # a control character cannot forge output
    assert "tab\\there" in result.output and "tab\there" not in result.output


def test_the_versions_of_a_name_are_its_own_only(project):
    for name in OTHER_TOOLS_NAMES:
        assert [v.name for v in versions_of(name)] == [name], name


@pytest.mark.parametrize(
    "name",
    ["o'brien", 'say "hi"', "both ' and \"", "100%", "a_b", "ünïcødé 名前", "what?", "at@sign"],
)
def test_every_name_other_tools_made_loads_by_alias_and_version(project, name):
    for ref in (f"{name}@champion", f"{name}/1", f"models:/{name}@champion"):
        assert load_localiser(ref).name  # a localiser, loaded
    assert served_model(f"{name}@champion") == project.model_uri  # what `petloc serve` hands MLflow


def test_predict_by_a_quoted_name(project, tmp_path):
    (tmp_path / "cat.jpg").write_bytes(jpeg(photo()))
    result = invoke("predict", "o'brien@champion", tmp_path / "cat.jpg", "--json")
    assert result.exit_code == 0 and '"box"' in result.output


@pytest.mark.parametrize("ref", ["petloc@nope", "o'brien@nope", "o'brien/7", "nothing@champion"])
def test_a_missing_version_is_one_line_listing_the_registry(project, ref):
    message = (
        rf"^models:/{re.escape(ref)}: no such registered model version; "
        r"registered: .*o'brien \(versions 1-1, champion=1\)"
    )
    with pytest.raises(PetlocError, match=message):
        invoke("predict", ref, "x.jpg")
    with pytest.raises(PetlocError, match=message):
        served_model(ref)  # petloc serve, before it hands over to MLflow


def test_a_model_name_too_long_to_be_a_path_is_looked_up_as_a_name(project):
    with pytest.raises(PetlocError, match="no such registered model version"):
        load_localiser("a" * 5000 + "@champion")


# ---- promote checks the name and alias first, and works with any name MLflow allows ------


def test_promote_registers_a_quoted_name_and_finds_it_again(project):
    first = invoke("promote", project.run_id, "--name", "o'neil")
    assert (
        first.output.strip() == "o'neil@champion is now version 1 (val mIoU 0.500, first champion)"
    )
    assert (
        invoke("promote", project.run_id, "--name", "o'neil").output.strip()
        == "already o'neil@champion (version 1)"
    )
    moved = invoke("promote", project.run_id, "--name", "o'neil", "--alias", "best", "--force")
    # the run is not registered twice
    assert moved.output.strip().startswith("o'neil@best is now version 1")
    assert [str(v.version) for v in versions_of("o'neil")] == ["1"]
    assert "o'neil" in invoke("models").output


BAD_NAMES = [
    ("../../etc", "MLflow forbids '/' in a name"),
    ("a b/c", "MLflow forbids '/' in a name"),
    ("x:y", "MLflow forbids ':' in a name"),
    ("..", "resolves to another as a path"),
    (".", "resolves to another as a path"),
    ("", "cannot be empty"),
    ("   ", "cannot be empty"),
    (" pad", "begins or ends with a space"),
    ("a" * 257, "257 characters, MLflow keeps at most 256"),
    ("two\nlines", r"unprintable character \\n"),
    ("red\x1b[31m", r"unprintable character \\x1b"),
    ("evil\u202egnp.exe", r"unprintable character \\u202e"),
    ("\u3000", "cannot be empty"),
    ("a@b", "no '@' in a name"),
    ("a?b", "no '?' in a name"),
]
BAD_ALIASES = [
    ("v3", "MLflow reserves v<N>"),
    ("V12", "MLflow reserves v<N>"),
    ("latest", "MLflow reserves 'latest'"),
    ("LaTeSt", "MLflow reserves 'latest'"),
    ("a b/c", "letters, digits, '_' and '-' only"),
    ("", "cannot be empty"),
    ("champion\n", "letters, digits, '_' and '-' only"),
    ("o'brien", "letters, digits, '_' and '-' only"),
    ("a@b", "letters, digits, '_' and '-' only"),
    ("x" * 256, "256 characters, MLflow keeps at most 255"),
]


@pytest.mark.parametrize(
    "option, value, reason",
    [("--name", *bad) for bad in BAD_NAMES] + [("--alias", *bad) for bad in BAD_ALIASES],
)
def test_a_bad_name_or_alias_is_one_line_and_creates_nothing(project, option, value, reason):
    names, versions = project.names(), project.version_count()
    with pytest.raises(
        PetlocError, match=rf"^{option} '.*': .*{re.escape(reason) if '?' in reason else reason}"
    ) as refused:
        invoke(
            "promote",
            project.run_id,
            "--name",
            "fine",
            option,
            value,
        )
    assert "\n" not in str(refused.value)
    assert (project.names(), project.version_count()) == (names, versions)


def test_the_name_of_a_run_s_experiment_file_is_checked_too(project):
    with pytest.raises(PetlocError, match=r"^model name 'a/b': MLflow forbids '/'"):
        from petloc.tracking.registry import promote

        promote(project.run_id, "a/b")


def test_a_name_of_the_longest_length_is_registered(project):
    name = "n" * 256
    assert invoke("promote", project.run_id, "--name", name).output.startswith(
        f"{name}@champion is now version 1"
    )


# ---- the rules are MLflow's (a mirror, since the experiment file is read without MLflow) --


def _mlflow_refuses(check, value) -> bool:
    try:
        check(value)
    except MlflowException:
        return True
    return False


@pytest.mark.parametrize(
    "name", [name for name, _ in BAD_NAMES] + OTHER_TOOLS_NAMES + ["petloc", "a/./b", "..x", "x.."]
)
def test_the_name_rule_refuses_whatever_mlflow_refuses(name):
    if _mlflow_refuses(_validate_model_name, name):
        assert name_problem(name) is not None


@pytest.mark.parametrize(
    "alias", [alias for alias, _ in BAD_ALIASES] + ["champion", "x-y_z", "v", "v1a", "ünï"]
)
def test_the_alias_rule_is_mlflow_s(alias):
    mlflow_refuses = _mlflow_refuses(
        lambda a: (_validate_model_alias_name(a), _validate_model_alias_name_reserved(a)), alias
    )
    # MLflow's `$` lets one final newline through; petloc refuses it as well.
    assert (alias_problem(alias) is not None) == (mlflow_refuses or alias.endswith("\n"))


# ---- the experiment file is checked when it is read -----------------------------------


@pytest.mark.parametrize(
    "section, key, value, reason",
    [
        ("registry", "name", "../../etc", "MLflow forbids '/'"),
        ("registry", "alias", "v3", "MLflow reserves v<N>"),
        ("registry", "alias", "latest", "MLflow reserves 'latest'"),
        ("registry", "name", "a\nb", r"unprintable character \\n"),
        ("pretrain", "register_as", "x" * 300, "at most 256"),
        ("pretrain", "alias", "V7", "MLflow reserves v<N>"),
    ],
)
def test_registry_names_in_the_experiment_file_are_checked_when_read(section, key, value, reason):
    with pytest.raises(PetlocError, match=rf"^exp.yaml: {section}\.{key}: .*{reason}"):
        parse_experiment({section: {key: value}}, "exp.yaml")


def test_the_experiment_file_takes_any_name_mlflow_allows():
    exp = parse_experiment(
        {"registry": {"name": "o'brien 100%"}, "space": {"backbone": "registered:ünï's@champion"}}
    )
    assert exp.registry.name == "o'brien 100%"
    assert parse_ref("ünï's@champion").name == "ünï's"


# ---- numbers given to flags are finite -------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["promote", "RUN", "--max-latency-ms", "nan"],
        ["promote", "RUN", "--max-latency-ms", "inf"],
        ["promote", "RUN", "--max-latency-ms", "-1"],
        ["sweep", "x.yaml", "--worker-timeout", "nan"],
        ["evaluate", "m", "d", "--val-split", "nan"],
        ["data", "oxford", "--val-share", "nan"],
        ["data", "oxford", "--val-share", "2"],
        ["serve", "m", "--port", "0"],
        ["ui", "--port", "70000"],
    ],
)
def test_a_number_that_is_not_finite_and_in_range_is_refused(args):
    result = invoke(*args)
    assert result.exit_code == 2 and "Invalid value for" in result.output


@pytest.mark.parametrize("budget", ["nan", "inf", ".inf", "-.inf"])
def test_the_experiment_file_s_latency_budget_is_a_finite_number(tmp_path, budget):
    (tmp_path / "exp.yaml").write_text(f"registry:\n  max_latency_ms: {budget}\n")
    with pytest.raises(
        PetlocError,
        match=r"registry\.max_latency_ms: Input should be a finite number|greater than 0",
    ):
        load_experiment(tmp_path / "exp.yaml")


# ---- section 6: a corrupt .keras file; a sweep's parent run ---------------------------


@pytest.mark.parametrize("content", [b"", b"garbage", bytes(range(256)) * 20])
def test_a_corrupt_keras_file_is_not_called_missing(tmp_path, content):
    path = tmp_path / "model.keras"
    path.write_bytes(content)
    with pytest.raises(
        PetlocError,
        match=r"model.keras: cannot be read as a Keras model \(not a .keras zip archive",
    ):
        load_localiser(path)


def test_reproducing_a_sweep_s_parent_run_names_its_best_trial(project):
    client = project.client
    experiment_id = client.create_experiment("sweep-parent")
    parent = client.create_run(
        experiment_id, tags={"petloc.kind": "sweep", "petloc.sweep": "tiny"}
    ).info.run_id
    client.log_metric(parent, "best_val_miou", 0.7)  # a sweep's parent carries its best figures
    for miou in (0.6, 0.7):
        trial = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
        client.log_metric(trial, "best_val_miou", miou)
        client.set_terminated(trial)
    with pytest.raises(
        PetlocError,
        match=rf"^run {parent}: the parent run of sweep 'tiny', which trained nothing "
        rf"itself; name one of its trial runs, such as its best, run {trial} ",
    ):
        reproduce(parent)


def test_load_model_of_the_python_api_takes_a_quoted_name(project):
    import petloc

    assert petloc.load_model("o'brien@champion").predict([photo()])[0].label in ("cat", "dog")
    assert mlflow.get_tracking_uri().endswith("mlruns/mlflow.db")


# ---- as a user runs it, and on a shared server ----------------------------------------


@pytest.mark.slow
def test_the_issue_s_probes_from_the_shell(store, tmp_path):
    def petloc(*args):
        return petloc_process(*args, cwd=store.root, env=petloc_env())

    assert petloc("promote", store.run_id, "--name", "o'hara").returncode == 0
    listed = petloc("models")
    assert listed.returncode == 0 and "o'hara" in listed.stdout and "ünïcødé 名前" in listed.stdout
    for args in (["serve", "o'hara@nope"],):
        refused = petloc(*args)
        assert (refused.returncode, refused.stdout) == (2, "")
        assert refused.stderr.startswith(
            "petloc: error: models:/o'hara@nope: no such registered model version; registered: "
        )
        assert refused.stderr.count("\n") == 1
    for args in (
        ["--name", "../../etc"],
        ["--alias", "v3"],
        ["--alias", "a b/c"],
        ["--alias", "latest"],
    ):
        refused = petloc("promote", store.run_id, *args)
        assert (
            refused.returncode == 2
            and refused.stderr.count("\n") == 1
            and refused.stderr.startswith("petloc: error: --")
        )
    nan = petloc("promote", store.run_id, "--max-latency-ms", "nan")
    assert nan.returncode == 2 and "'nan' is not a finite number" in nan.stderr


@pytest.mark.slow
def test_names_on_a_postgresql_tracking_server(postgres_uri, tmp_path):
    """PostgreSQL keeps at most 256 characters of a name and compares exactly; the client
    talks to it over HTTP, where every filter is parsed by the server."""
    with (
        tracking_server(postgres_uri, tmp_path / "artifacts") as uri,
        in_project(tmp_path),
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        configure(uri)
        client = MlflowClient(uri, registry_uri=uri)
        experiment_id = client.create_experiment("names")
        run_id = client.create_run(experiment_id).info.run_id
        client.log_metric(run_id, "best_val_miou", 0.5)
        client.set_tag(run_id, "val_data", VAL_DATA)
        model = mlflow.initialize_logged_model(
            name="model", source_run_id=run_id, experiment_id=experiment_id
        )
        client.set_tag(run_id, "model_uri", f"models:/{model.model_id}")
        client.set_terminated(run_id)
        for name in OTHER_TOOLS_NAMES:
            client.create_registered_model(name)
            client.create_model_version(
                name, f"models:/{model.model_id}", run_id=run_id, model_id=model.model_id
            )
        for name in OTHER_TOOLS_NAMES:
            assert [v.name for v in versions_of(name)] == [name], name
        longest = "n" * 256
        for name in ("o'neil", longest):
            assert invoke("promote", run_id, "--name", name).output.startswith(
                f"{name}@champion is now version 1"
            )
            assert (
                invoke("promote", run_id, "--name", name).output.strip()
                == f"already {name}@champion (version 1)"
            )
        with pytest.raises(PetlocError, match="257 characters, MLflow keeps at most 256"):
            invoke("promote", run_id, "--name", longest + "n")
        listed = invoke("models").output
        assert all(
            name in listed for name in ("o'brien", "100%", "a_b", "ünïcødé 名前", "o'neil", longest)
        )
        with pytest.raises(
            PetlocError, match=r"^models:/o'brien@nope: no such registered model version"
        ):
            served_model("o'brien@nope")


@pytest.mark.slow  # 105 versions: SQLite commits each
def test_models_lists_a_registry_of_more_than_one_page(tmp_path):
    """MLflow answers 100 registered models a page; a team's registry holds more."""
    with in_project(tmp_path):
        uri = configure()
        client = MlflowClient(uri, registry_uri=uri)
        names = [f"model-{i:03}" for i in range(105)]
        for name in names:
            client.create_registered_model(name)
            client.create_model_version(name, "file:///nowhere")
        assert [row["name"] for row in list_versions()] == names
