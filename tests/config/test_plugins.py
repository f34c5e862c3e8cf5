"""Your own backbone: an experiment's `plugins:` are imported before the file is checked, so
their backbones are valid choices; installed packages register through entry points; every
mistake is one line naming the file, key, module or entry point."""

import pytest

import petloc
from petloc import hyperparams, plugins
from petloc.config import load_experiment
from petloc.errors import PetlocError
from tests.helpers import forgetting_plugins, write_plugin


@pytest.fixture
def project(tmp_path, monkeypatch):
    """tmp_path as the current directory, plug-ins registered in a test forgotten after it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # cleans sys.path after the test
    with forgetting_plugins(tmp_path):
        yield tmp_path


def experiment(folder, text: str):
    path = folder / "x.yaml"
    path.write_text("name: x\n" + text)
    return path


def test_a_plugin_s_backbone_is_a_valid_choice_once_the_file_names_its_module(project):
    write_plugin(project, "cfg_nets", "mynet", keras_free=True)
    plain = experiment(project, "space:\n  backbone: [simple, mynet]\n")
    with pytest.raises(PetlocError, match="unknown backbone 'mynet'"):
        load_experiment(plain)

    path = experiment(
        project,
        "plugins: [cfg_nets]\nspace:\n  backbone: [simple, mynet]\npretrain:\n  backbone: mynet\n",
    )
    exp = load_experiment(path)
    assert exp.plugins == ["cfg_nets"] and exp.space["backbone"] == ["simple", "mynet"]
    assert exp.pretrain.backbone == "mynet"
    assert plugins.origin("mynet") == "cfg_nets"
    assert hyperparams.plugin_modules({"backbone": "mynet"}) == ("cfg_nets",)


def test_plugin_modules_are_found_under_the_current_directory(tmp_path, monkeypatch):
    """As `python -m` finds them, also when petloc runs as the `petloc` script (no '' on sys.path)."""
    (tmp_path / "mypackage").mkdir()
    (tmp_path / "mypackage" / "__init__.py").write_text("")
    write_plugin(tmp_path / "mypackage", "nets", "cwdnet", keras_free=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", ".")])
    with forgetting_plugins(tmp_path):
        exp = load_experiment(
            experiment(tmp_path, "plugins: [mypackage.nets]\nspace: {backbone: cwdnet}\n")
        )
        assert exp.space["backbone"] == "cwdnet" and plugins.origin("cwdnet") == "mypackage.nets"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "plugins: [no_such_plugin]\n",
            "x.yaml: plugins: cannot import 'no_such_plugin': it is not installed here "
            "and not under the current directory",
        ),
        (
            "plugins: [broken_plugin]\n",
            "x.yaml: plugins: cannot import 'broken_plugin': ZeroDivisionError: division by zero",
        ),
        ("plugins: ['not a module']\n", "x.yaml: plugins: 'not a module' is not a module name"),
        ("plugins: cfg_nets\n", "x.yaml: plugins: expected a list of module names"),
        (
            "plugins: [taken_plugin]\n",
            "x.yaml: plugins: taken_plugin: register_backbone('simple') in taken_plugin: "
            "'simple' is a built-in backbone",
        ),
    ],
)
def test_a_bad_plugin_is_one_line_naming_the_file_key_and_module(project, text, message):
    (project / "broken_plugin.py").write_text("1 / 0\n")
    (project / "taken_plugin.py").write_text(
        "import petloc\npetloc.register_backbone('simple')(lambda *a: None)\n"
    )
    with pytest.raises(PetlocError) as err:
        load_experiment(experiment(project, text))
    assert str(err.value).startswith(f"{project}/{message}"), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name, problem",
    [
        ("simple", "'simple' is a built-in backbone"),
        (
            "simple_contextual",
            "'simple_contextual' and 'simple_context' share their first 10 characters",
        ),
        ("my net", "'my net' is not a usable backbone name"),
        ("registered:x", "is not a usable backbone name"),
        ("", "is not a usable backbone name"),
    ],
)
def test_a_taken_or_unusable_name_is_refused_in_one_line(project, name, problem):
    with pytest.raises(PetlocError, match=f"register_backbone\\({name!r}\\) in .*: .*{problem}"):
        petloc.register_backbone(name)(lambda *args: None)


def test_a_name_is_taken_by_its_first_module_and_registers_again_from_it(project):
    write_plugin(project, "first_nets", "twice", keras_free=True)
    plugins.import_plugins(["first_nets"], "test")
    hyperparams.add_choice("backbone", "twice", "first_nets")  # the same module again: fine
    with pytest.raises(PetlocError, match="'twice' is already registered by first_nets"):
        petloc.register_backbone("twice")(lambda *args: None)


def installed(folder, dist: str, entry_points: str) -> None:
    """A tiny installed distribution: its dist-info on sys.path is all importlib.metadata reads."""
    info = folder / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[petloc.backbones]\n{entry_points}\n")


def test_an_installed_package_registers_through_its_entry_point(project, monkeypatch):
    write_plugin(project, "ep_nets", "epnet", keras_free=True)
    (project / "ep_builder.py").write_text(
        "def build(image_size, width, weights):\n    return None\n"
    )
    installed(project, "petloc_ep_demo", "epnet = ep_nets\nepbuilt = ep_builder:build")
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    assert plugins.builder("epnet") is not None and plugins.origin("epnet") == "ep_nets"
    assert plugins.builder("epbuilt") is not None and plugins.origin("epbuilt") == "ep_builder"
    # and an experiment may name them without `plugins:`
    assert load_experiment(experiment(project, "space: {backbone: [epnet, epbuilt]}\n"))


def test_a_broken_entry_point_is_a_warning_until_its_backbone_is_asked_for(
    project, monkeypatch, caplog
):
    """One bad installed package must not stop the experiments that never use it."""
    installed(project, "petloc_broken_demo", "gone = not_there_at_all")
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    reason = (
        "entry point gone = not_there_at_all of petloc_broken_demo 1.0 (group petloc.backbones): "
        "cannot load it: ModuleNotFoundError"
    )
    with caplog.at_level("WARNING", logger="petloc"):
        plugins.load_entry_points()
        plugins.load_entry_points()
        assert load_experiment(experiment(project, "space: {backbone: simple}\n"))
    [warning] = [r.getMessage() for r in caplog.records if "not_there_at_all" in r.getMessage()]
    assert reason in warning and "\n" not in warning

    for text in ("space: {backbone: [simple, gone]}\n", "pretrain: {backbone: gone}\n"):
        with pytest.raises(PetlocError) as err:
            load_experiment(experiment(project, text))
        assert reason in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_backbone_registered_in_main_warns_once_and_is_not_recorded_as_needed(project, caplog):
    """A notebook's or a script's backbone: no other process can import `__main__` for it."""

    def build(image_size, width, weights):
        return None

    build.__module__ = "__main__"
    with caplog.at_level("WARNING", logger="petloc"):
        petloc.register_backbone("notebooknet")(build)
        petloc.register_backbone("notebooknet")(build)  # the notebook's cell run again
    [warning] = [r.getMessage() for r in caplog.records if "notebooknet" in r.getMessage()]
    assert "__main__" in warning and "\n" not in warning
    assert hyperparams.plugin_modules({"backbone": "notebooknet"}) == ()
