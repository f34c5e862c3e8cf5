"""What the tests share: a tiny synthetic dataset and experiment file, ways to run `petloc`
(in this process or as a user does, in a new one), and small pictures and JPEG tricks."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from petloc.cli import cli
from petloc.config import load_experiment
from petloc.data.synth import generate
from petloc.tracking import runs
from petloc.tracking.store import configure
from petloc.tracking.sweep_record import SweepRecord
from tests.servers import free_port  # noqa: F401  (the tests take it from here with the other helpers)

TINY_SPACE = {
    "backbone": "simple",
    "width": 0.25,
    "head_units": 16,
    "aug_strength": 0.2,
    "learning_rate": 0.003,
    "batch_size": 16,
}


# ---- data, experiment, project ----------------------------------------------------------


def tiny_dataset(folder: Path, count: int = 60) -> Path:
    return generate(folder, count=count, seed=1, size=64)


def tiny_experiment(folder: Path, data: Path, **sections) -> Path:
    body = {
        "name": "tiny",
        "data": {"path": str(data), "image_size": 32, "val_split": 0.25, "seed": 0},
        "train": {"epochs": 1},
        "space": dict(TINY_SPACE),
        "tuner": {"kind": "random", "max_trials": 2, "seed": 0},
        "tracking": {"experiment": "tiny", "gallery_images": 4},
    }
    for key, value in sections.items():
        body[key] = {**body.get(key, {}), **value}
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))  # the file keeps the order written here
    return path


@contextmanager
def in_project(root: Path):
    """Run inside `root` as a fresh project: its own mlruns/ store, no MLFLOW_TRACKING_URI."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield


@contextmanager
def recorded_sweep(root: Path):
    """A tiny sweep's parent run in the fresh project `root`, its settings logged, with no
    search around it: (experiment, SweepRecord, client on its store)."""
    exp = load_experiment(tiny_experiment(root, tiny_dataset(root / "photos", count=8)))
    with in_project(root):
        uri = configure()
        record = SweepRecord.create(exp, "f1", runs.experiment_id(exp.tracking.experiment))
        record.log_settings(exp, "f1")
        yield exp, record, MlflowClient(uri)


def store_client(root: Path) -> MlflowClient:
    """A client on the project store of `root` (mlruns/mlflow.db), registry included."""
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    return MlflowClient(uri, registry_uri=uri)


def children(client: MlflowClient, parent_id: str) -> list:
    """The trial runs of a sweep's parent run."""
    parent = client.get_run(parent_id)
    return client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )


# ---- running petloc -----------------------------------------------------------------------


def invoke(*args):
    """`petloc ARGS` in this process; a PetlocError reaches the test instead of becoming exit 2."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def run_id_of(output: str) -> str:
    """The run id `petloc train` prints ("... MLflow run ID ...")."""
    return output.split("MLflow run ")[1].split()[0]


def parent_id_of(output: str) -> str:
    """The parent run id `petloc sweep` prints ("parent run ID", then "; browse with: ..." or
    the lines of its pages)."""
    found = re.search(r"^parent run ([0-9a-f]{32})\b", output, re.MULTILINE)
    assert found, f"no parent run id in:\n{output}"
    return found.group(1)


PETLOC = [sys.executable, "-m", "petloc"]


def petloc_env() -> dict:
    """This environment without MLFLOW_TRACKING_URI: a petloc process uses its folder's mlruns/."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def petloc_process(*args, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    """`petloc ARGS` as a user runs it, in a new process: its exit code, stdout and stderr."""
    return subprocess.run(
        [*PETLOC, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---- pictures -----------------------------------------------------------------------------


def photo(seed: int = 0, w: int = 64, h: int = 48) -> np.ndarray:
    """A smooth random RGB picture: JPEG-friendly, different per seed."""
    noise = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (5, 5), 2)


def encode(pixels: np.ndarray, ext: str = ".jpg", *params: int) -> bytes:
    """RGB (or gray, or OpenCV's BGRA) pixels as the bytes of an `ext` file."""
    bgr = (
        cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
        if pixels.ndim == 3 and pixels.shape[2] == 3
        else pixels
    )
    ok, buffer = cv2.imencode(ext, bgr, list(params))
    assert ok
    return buffer.tobytes()


def jpeg(rgb: np.ndarray) -> bytes:
    return encode(rgb, ".jpg")


def with_extraneous_bytes(data: bytes, count: int = 240) -> bytes:
    """Garbage before the end marker: libjpeg skips it and the image is complete."""
    assert data.endswith(b"\xff\xd9")
    return data[:-2] + bytes(range(1, count + 1)) + data[-2:]


def jpeg_with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose EXIF orientation tells viewers how to turn the stored pixels."""
    from PIL import Image

    exif = Image.Exif()
    exif[274] = orientation
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", exif=exif, quality=95)
    return buffer.getvalue()


def marked_photo(w: int = 64, h: int = 48) -> np.ndarray:
    """Gray, with a red block in the stored top-left corner."""
    rgb = np.full((h, w, 3), 128, np.uint8)
    rgb[:12, :16] = (255, 0, 0)
    return rgb


def blank_png(width: int, height: int) -> bytes:
    """A black 8-bit gray PNG: width x height bytes once decoded, a thousandth of that on disk."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    deflate, row = zlib.compressobj(9), bytes(width + 1)  # filter byte + a row of zeros
    body = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


# ---- plug-in backbones (petloc/plugins.py) ------------------------------------------------

PLUGIN_SOURCE = '''
import keras
import petloc


@keras.saving.register_keras_serializable(package="{module}")
class Doubled(keras.layers.Layer):
    """A layer of the plug-in's own: loading a model with it needs this module."""

    def call(self, x):
        return x * 2.0


@petloc.register_backbone("{name}")
def build(image_size, width, weights):
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=4, padding="same", activation="relu")(x)
    {custom}
    return keras.Model(inputs, x, name="{name}")
'''

NAME_ONLY_PLUGIN = """
import petloc


@petloc.register_backbone("{name}")
def build(image_size, width, weights):
    raise NotImplementedError("only registered")
"""


def write_plugin(
    folder: Path, module: str, name: str, custom_layer: bool = True, keras_free: bool = False
) -> Path:
    """A plug-in module `module` in `folder` registering backbone `name`: a tiny real network
    (with its own registered Keras layer when `custom_layer`), or, `keras_free`, only the name."""
    path = folder / f"{module}.py"
    source = NAME_ONLY_PLUGIN if keras_free else PLUGIN_SOURCE
    custom = "x = Doubled()(x)" if custom_layer else ""
    path.write_text(source.format(module=module, name=name, custom=custom))
    return path


@contextmanager
def forgetting_plugins(folder: Path):
    """The plug-ins the block registers are forgotten after it, and the modules it imported from `folder`."""
    from petloc import hyperparams, plugins

    modules, added = set(sys.modules), {k: dict(v) for k, v in hyperparams.PLUGIN_CHOICES.items()}
    builders, loaded = dict(plugins.BUILDERS), plugins._entry_points_loaded
    broken = dict(plugins.BROKEN)
    try:
        yield
    finally:
        for name in set(sys.modules) - modules:
            if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(folder)):
                del sys.modules[name]
        for kind, choices in added.items():
            hyperparams.PLUGIN_CHOICES[kind] = choices
        plugins.BUILDERS.clear()
        plugins.BUILDERS.update(builders)
        plugins._entry_points_loaded = loaded
        plugins.BROKEN.clear()
        plugins.BROKEN.update(broken)


# two cat breeds (capitalised, as in the Oxford-IIIT Pet file names) and two dog breeds
TINY_BREEDS = {"cat": ("Abyssinian", "Bengal"), "dog": ("beagle", "pug")}


def tiny_breed_dataset(folder: Path, count: int = 60) -> Path:
    """Synthetic pets in the cats_dogs layout named as breeds (`Bengal_3.jpg`, `pug_7.jpg`):
    with `data.labels: breed` four classes, each knowing its species."""
    photos = tiny_dataset(folder.with_name(folder.name + "-synth"), count)
    folder.mkdir(parents=True, exist_ok=True)
    for n, image in enumerate(sorted(photos.glob("*.jpg"))):
        species = "cat" if "_cat_" in image.name else "dog"
        breed = TINY_BREEDS[species][n % 2]
        image.rename(folder / f"{breed}_{n}.jpg")
        image.with_suffix(".txt").rename(folder / f"{breed}_{n}.txt")
    return folder


# ---- datasets of other classes than the species -------------------------------------------


def relabelled_images(classes, count: int = 24, size: int = 32, seed: int = 0):
    """An in-memory ImageSet of `count` synthetic pets whose labels are dealt round the given
    `Classes` in turn (every class gets images), boxes normalised: a dataset of any number of
    classes without a reader for it."""
    from petloc.data.pipeline import ImageSet
    from petloc.data.synth import MIN_SIZE, render

    rng, drawn = np.random.default_rng(seed), max(size, MIN_SIZE)
    images, boxes = [], []
    for _ in range(count):
        image, _label, box = render(rng, size=drawn)
        images.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
        boxes.append(np.asarray(box, np.float32) / drawn)
    labels = np.arange(count, dtype=np.int32) % len(classes)
    return ImageSet(
        np.stack(images),
        labels,
        np.stack(boxes).astype(np.float32),
        [f"pet{i}.jpg" for i in range(count)],
        [""] * count,
        digest=f"relabelled-{len(classes)}-{count}-{seed}",
        classes=classes,
    )
