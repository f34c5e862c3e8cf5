"""`pip install .` (not editable) gives a petloc that works outside the checkout.

The slow test builds the wheel as pip does (`pip wheel --no-deps`, build isolation), checks
what is inside, installs it with `pip install --no-deps --target` (the dependencies come from
this test's environment, so nothing else is downloaded) and runs its `petloc` entry point from
a folder that is not the checkout: the help, the bundled example experiments, making data, and
one tracked training run into that folder's mlruns/. What it proves: the wheel holds every
module and the example experiments, its entry point starts, and nothing petloc needs at run
time is read from the checkout. What it does not: that pip resolves the dependency pins on a
fresh machine (the pins are checked by installing this environment with `make setup`).
"""

import email
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.helpers import tiny_dataset

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted(p.name for p in (ROOT / "experiments").glob("*.yaml"))


def petloc_packages() -> set[str]:
    """Every package under petloc/: each folder holding Python modules."""
    return {
        ".".join(folder.relative_to(ROOT).parts)
        for folder in [ROOT / "petloc", *(ROOT / "petloc").rglob("*")]
        if folder.is_dir() and any(folder.glob("*.py"))
    }


def test_every_package_under_petloc_is_listed_in_pyproject():
    """pyproject lists its packages (petloc.experiments maps the top-level experiments/ folder
    into the package), so a new sub-package must be added there or the wheel leaves it out."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    assert listed - {"petloc.experiments"} == petloc_packages()


# What the build reads; copied, as setuptools writes build/ and *.egg-info/ beside its sources.
SOURCES = ("pyproject.toml", "README.md", "petloc", "experiments")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)],
        check=True,
        cwd=out,
    )
    [built] = out.glob("petloc-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict:
    """The wheel installed alone into a folder of its own, and the environment that runs it."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--quiet",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYTHONPATH")}
    env["PYTHONPATH"] = str(target)  # before the environment's own (editable) petloc
    return {"target": target, "env": env, "petloc": target / "bin" / "petloc"}


def run(installed: dict, cwd: Path, *args: str) -> str:
    result = subprocess.run(
        [str(installed["petloc"]), *args],
        cwd=cwd,
        env=installed["env"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_the_wheel_holds_every_module_the_examples_and_the_entry_point(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "petloc").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert {f"petloc/experiments/{name}" for name in EXPERIMENTS} <= names
    assert not any(name.startswith(("tests/", "benchmarks/", "mlruns/", "data/")) for name in names)

    dist_info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "petloc = petloc.cli:main" in zipfile.ZipFile(wheel).read(dist_info).decode()
    metadata = email.message_from_bytes(
        zipfile.ZipFile(wheel).read(dist_info.replace("entry_points.txt", "METADATA"))
    )
    requires = metadata.get_all("Requires-Dist")
    # psycopg only with the postgres extra
    assert [r for r in requires if r.startswith("psycopg")] == [
        'psycopg[binary]<4,>=3.1; extra == "postgres"'
    ]
    assert "postgres" in metadata.get_all("Provides-Extra")


@pytest.mark.slow
def test_the_installed_petloc_runs_from_another_folder(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [sys.executable, "-c", "import petloc; print(petloc.__file__)"],
        cwd=elsewhere,
        env=installed["env"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert Path(where.strip()).is_relative_to(installed["target"]), where

    assert "Commands:" in run(installed, elsewhere, "--help")
    # The example experiments come with the package: by name, and as the README writes them.
    assert "name: quick" in run(installed, elsewhere, "config", "quick.yaml")
    assert "name: cats_dogs" in run(installed, elsewhere, "config", "experiments/cats_dogs.yaml")
    run(installed, elsewhere, "data", "synth", "--out", "synth", "--count", "8")
    assert len(list((elsewhere / "synth").glob("*.jpg"))) == 8

    photos = tiny_dataset(elsewhere / "photos")
    (elsewhere / "tiny.yaml").write_text(
        f"name: tiny\ndata: {{path: {photos}, image_size: 32, val_split: 0.25}}\n"
        "train: {epochs: 1}\nspace: {backbone: simple, width: 0.25, head_units: 8, batch_size: 8}\n"
        "tracking: {experiment: tiny, gallery_images: 2}\n"
    )
    printed = run(installed, elsewhere, "train", "tiny.yaml")
    assert "runs:/" in printed, printed
    assert (elsewhere / "mlruns" / "mlflow.db").is_file()  # the store of the folder it ran in
