"""A localiser exported for other runtimes: a TensorFlow SavedModel, TFLite or ONNX.

Each export is checked before it is kept: the written file is loaded back with its own
runtime and run beside the Keras model on photo files decoded as `petloc predict` decodes
them (the --data folder's, else the validation photos of the model's own run, else synthetic
ones); the largest differences in boxes and class scores are reported, and an export that
differs by more than the tolerance is removed, not left to be used. The folder also holds
`petloc.json`: the format, the classes (in the order of the "cls" scores), the input size
and the check's figures, so that `petloc predict` answers with the export as with the Keras
model (`exported_predictor`), and so that other programs know what the numbers mean.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from petloc.data.classes import Classes
from petloc.data.images import IMAGE_SUFFIXES, BadImage, read_image
from petloc.data.synth import generate
from petloc.errors import PetlocError, did_you_mean
from petloc.files import SMALL_FILE_LIMIT, UnreadableFile, read_bounded
from petloc.model import model_classes
from petloc.quiet import native_stderr_filtered
from petloc.training.evaluate import validation_paths
from petloc.training.predict import Forward, ForwardPredictor, Predictor

METADATA = "petloc.json"
CHECK_PHOTOS = 8  # photos the check runs through both models
ONNX_OPSET = 17
SYNTHETIC = "synthetic"  # where the check's photos came from when neither --data nor a run gave any
VALIDATION = "validation photos of "  # the check's source, before the run's dataset folder
TFLITE_DELEGATE_NOTE = re.compile(r"INFO: Created TensorFlow Lite XNNPACK delegate")
EVERY_LINE = re.compile("")

Say = Callable[[str], None]


# ---- the formats: how each is written and run -----------------------------------------------


# What a format's writer says beyond the file: entries for petloc.json (empty when none)
Notes = dict[str, object]


def _write_savedmodel(model: keras.Model, folder: Path) -> tuple[str, Notes]:
    model.export(str(folder), format="tf_saved_model", verbose=False)
    return ".", {}  # the folder is the SavedModel


def _run_savedmodel(path: Path) -> Forward:
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    (name,) = serve.structured_input_signature[1]  # the model's one input
    return lambda batch: {k: v.numpy() for k, v in serve(**{name: tf.constant(batch)}).items()}


def _write_tflite(model: keras.Model, folder: Path) -> tuple[str, Notes]:
    """float32 TFLite with TFLite's built-in ops only: TensorFlow's own ops (Select ops) would
    need the Flex delegate, which TensorFlow's pip interpreter does not apply."""
    # From a SavedModel: the converter's path for Keras 3 models (custom layers are traced)
    with tempfile.TemporaryDirectory() as saved:
        model.export(saved, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)  # float32, not quantised
        try:
            # the converter also lists on stderr each op it lacks: the error below says it
            with native_stderr_filtered(EVERY_LINE):
                flat = converter.convert()
        except Exception as err:
            lacking = re.search(r"TF Select ops: ([\w, ]+)", str(err))
            if lacking is None:
                raise
            raise PetlocError(
                f"TFLite has no built-in op for {lacking[1].strip()}, which the model uses "
                "(as second_stage=head_crop does): export it as savedmodel or onnx"
            ) from None
    (folder / "model.tflite").write_bytes(flat)
    return "model.tflite", {}


def _run_tflite(path: Path) -> Forward:
    runner = _tflite_interpreter(str(path)).get_signature_runner()
    (name,) = runner.get_input_details()  # the model's one input; batches resize it
    size = int(runner.get_input_details()[name]["shape_signature"][1])
    # The first call sets up the CPU delegate, which says so on stderr: not for users
    with native_stderr_filtered(TFLITE_DELEGATE_NOTE):
        runner(**{name: np.zeros((1, size, size, 3), np.float32)})
    return lambda batch: runner(**{name: batch})


def _tflite_interpreter(path: str):
    """TensorFlow's TFLite interpreter: deprecated in favour of LiteRT (`ai-edge-litert`), but
    still in TensorFlow 2.21, which petloc depends on already."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter")
        return tf.lite.Interpreter(model_path=path)


def _write_onnx(model: keras.Model, folder: Path) -> tuple[str, Notes]:
    import tf2onnx  # type: ignore[import-untyped]

    size = int(model.input_shape[1])
    spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="pixels"),)
    tf2onnx.convert.from_function(
        tf.function(lambda pixels: model(pixels, training=False)),
        input_signature=spec,
        opset=ONNX_OPSET,
        output_path=str(folder / "model.onnx"),
    )
    return "model.onnx", {"opset": ONNX_OPSET}


def _run_onnx(path: Path) -> Forward:
    import onnxruntime  # type: ignore[import-untyped]

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (pixels,) = session.get_inputs()
    names = [output.name for output in session.get_outputs()]
    return lambda batch: dict(zip(names, session.run(names, {pixels.name: batch}), strict=True))


@dataclass(frozen=True)
class Format:
    write: Callable[[keras.Model, Path], tuple[str, Notes]]  # into an empty folder
    run: Callable[[Path], Forward]  # the written file's forward pass, in its own runtime
    suffix: str = ""  # the written file's, when it is one file (`petloc predict FILE`)
    needs: tuple[str, ...] = ()  # modules outside petloc's own requirements


FORMATS: dict[str, Format] = {
    "savedmodel": Format(_write_savedmodel, _run_savedmodel),
    "tflite": Format(_write_tflite, _run_tflite, ".tflite"),
    "onnx": Format(_write_onnx, _run_onnx, ".onnx", needs=("tf2onnx", "onnxruntime")),
}


def check_format(name: str) -> Format:
    """The format called `name`, or a one-line error listing them (with the nearest name)."""
    if name in FORMATS:
        return FORMATS[name]
    hint = did_you_mean(name, FORMATS)
    raise PetlocError(
        f"--format: {name!r} is not one of {', '.join(FORMATS)}" + (f";{hint}" if hint else "")
    )


def check_runtime(name: str) -> None:
    """A one-line error when the modules format `name` needs are not installed."""
    missing = [module for module in FORMATS[name].needs if not _importable(module)]
    if missing:
        raise PetlocError(
            f"--format {name} needs {' and '.join(missing)}, which are not installed "
            f"(pip install 'petloc[{name}]')"  # the extra named after its format
        )


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


# ---- exporting ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """How the export answered beside the Keras model."""

    photos: int
    source: str  # the --data folder, "validation photos of FOLDER" (the run's), or "synthetic"
    max_box_difference: float  # corners normalised to the image side (0-1)
    max_score_difference: float  # class probabilities
    same_labels: int  # photos both gave the same label
    tolerance: float

    def passed(self) -> bool:
        # a NaN difference fails too: NaN <= x is false
        return all(
            d <= self.tolerance for d in (self.max_box_difference, self.max_score_difference)
        )

    def line(self) -> str:
        line = (
            f"checked on {self.photos} {_photos_from(self.source)}: largest difference from the "
            f"Keras model {self.max_box_difference:.1e} in boxes (normalised to the image side), "
            f"{self.max_score_difference:.1e} in class scores; tolerance {self.tolerance:g}; "
            f"same label on {self.same_labels}/{self.photos}"
        )
        if self.source == SYNTHETIC:
            line += " (--data DIR checks on your own photos)"
        return line


def _photos_from(source: str) -> str:
    if source == SYNTHETIC:
        return "synthetic photos"
    if source.startswith(VALIDATION):
        return source  # "validation photos of FOLDER"
    return f"photos from {source}"


@dataclass(frozen=True)
class RunData:
    """The data the model was trained on: its run's dataset folder and the split it made, so
    that the check runs on the run's validation photos when no --data is given."""

    folder: str
    val_split: float
    seed: int


@dataclass(frozen=True)
class Exported:
    folder: Path
    file: Path  # the artifact (the folder itself for a SavedModel)
    format: str
    check: Check


def check_out(out: str | os.PathLike) -> Path:
    """--out as a folder to create, or an empty one; a one-line error otherwise."""
    path = Path(out)
    try:
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            what = "a folder that is not empty" if path.is_dir() else "a file"
            raise PetlocError(f"--out {out}: is {what}; give a new or empty folder")
    except OSError as err:
        raise PetlocError(f"--out {out}: cannot be read ({err.strerror or err})") from None
    return path


def export_model(
    model: keras.Model,
    format: str,
    out: str | os.PathLike,
    *,
    source: str,
    data: str | os.PathLike | None = None,
    run_data: RunData | None = None,
    provenance: Notes | None = None,
    tolerance: float,
    say: Say = print,
) -> Exported:
    """Writes `model` in `format` into the folder `out` with its petloc.json, once the export
    answers as the Keras model does on photos (`data`'s, else the validation photos of
    `run_data`, else synthetic ones) within `tolerance`; above it, or on any failure, nothing
    is left at `out`. `source` names the model in messages and in petloc.json, `provenance`
    adds what it resolved to (registered name, version, run id)."""
    fmt = check_format(format)
    check_runtime(format)
    folder = check_out(out)
    photos, where = check_photos(data, model, run_data)
    with _staging(folder) as staging:
        name, notes = _written(fmt, model, staging, source, format)
        check = compare(model, fmt.run(staging / name), photos, where, tolerance)
        say(check.line())
        if not check.passed():
            raise PetlocError(
                f"{format} export of {source} differs from the Keras model by more than the "
                f"tolerance {tolerance:g} (boxes {check.max_box_difference:.1e}, scores "
                f"{check.max_score_difference:.1e}); nothing kept at {out}"
            )
        write_metadata(staging, format, name, model, source, check, {**(provenance or {}), **notes})
        staging.rename(folder)  # onto a new or empty folder, as check_out made sure
    file = folder / name if name != "." else folder
    return Exported(folder, file, format, check)


def _written(
    fmt: Format, model: keras.Model, folder: Path, source: str, format: str
) -> tuple[str, Notes]:
    try:
        return fmt.write(model, folder)
    except Exception as err:  # noqa: BLE001  (a converter raises anything: one line names the model)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise PetlocError(f"{source}: cannot be exported as {format} ({first})") from None


@contextmanager
def _staging(folder: Path) -> Iterator[Path]:
    """A new folder beside `folder` to write into; removed unless it was moved to `folder`."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as err:
        raise PetlocError(f"--out {folder}: cannot be written ({err.strerror or err})") from None
    staging.chmod(0o777 & ~_umask())  # as a folder made by mkdir, not mkdtemp's 0700
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_photos(
    data: str | os.PathLike | None, model: keras.Model, run_data: RunData | None = None
) -> tuple[list[np.ndarray], str]:
    """The check's photos, decoded from files as `petloc predict` decodes them (RGB, upright):
    the first few image files under `data`, else the first validation photos of `run_data`
    when its folder is readable here, else a few synthetic photos written as JPEGs."""
    if data is None:
        validation = _validation_files(model, run_data)
        if run_data is not None and validation:
            where = VALIDATION + run_data.folder
            return _decoded(validation, where), where
        with tempfile.TemporaryDirectory() as folder:
            size = max(int(model.input_shape[1]), 64)
            generate(Path(folder), count=CHECK_PHOTOS, seed=0, size=size)
            return _decoded(sorted(Path(folder).glob("*.jpg")), "synthetic"), SYNTHETIC
    root = Path(data)
    if not root.is_dir():
        raise PetlocError(f"--data {data}: no such folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    photos = _decoded(files, f"--data {data}")
    return photos, str(data)


def _validation_files(model: keras.Model, run_data: RunData | None) -> list[Path]:
    """The run's validation photo files, as its split made them; none when the run's folder
    is not readable here (a model from another machine) or no longer splits as it did."""
    if run_data is None or not os.access(run_data.folder, os.R_OK | os.X_OK):
        return []
    try:
        paths = validation_paths(model, run_data.folder, run_data.val_split, run_data.seed)
    except (PetlocError, OSError):
        return []
    return [Path(p) for p in paths]


def _decoded(files: list[Path], where: str) -> list[np.ndarray]:
    photos = []
    for path in files:
        try:
            photos.append(read_image(path).pixels)
        except BadImage:
            continue  # the check needs photos, not every photo
        if len(photos) == CHECK_PHOTOS:
            break
    if not photos:
        raise PetlocError(
            f"{where}: no readable photo ({', '.join(IMAGE_SUFFIXES)}) to check the export on"
        )
    return photos


def compare(
    model: keras.Model, forward: Forward, photos: list[np.ndarray], source: str, tolerance: float
) -> Check:
    """Both models on the same resized photos, as `petloc predict` feeds them."""
    resize = Predictor(model).model_input
    batch = np.stack([resize(photo) for photo in photos]).astype(np.float32)
    want = {k: np.asarray(v) for k, v in model(batch, training=False).items()}
    got = {k: np.asarray(v) for k, v in forward(batch).items()}
    difference = {k: float(np.max(np.abs(want[k] - got[k]))) for k in ("box", "cls")}
    same = int(np.sum(want["cls"].argmax(1) == got["cls"].argmax(1)))
    return Check(len(photos), source, difference["box"], difference["cls"], same, tolerance)


# ---- petloc.json, and predicting with an export ------------------------------------------------


def write_metadata(
    folder: Path,
    format: str,
    name: str,
    model: keras.Model,
    source: str,
    check: Check,
    notes: Notes,
) -> None:
    size = int(model.input_shape[1])
    classes = model_classes(model)
    meta = {
        "format": format,
        "file": name,
        "classes": list(classes.names),
        "species": list(classes.species) if classes.species else None,
        "image_size": size,
        "input": f"float32 RGB pixels 0-255, shape (batch, {size}, {size}, 3); "
        "resize the photo to it (petloc uses OpenCV's INTER_AREA)",
        "outputs": {
            "cls": "a probability for each of `classes`, in their order",
            "box": "the head's corners x1, y1, x2, y2 as fractions of the image's width and height",
        },
        "source": source,
        **notes,
        "check": asdict(check),
    }
    (folder / METADATA).write_text(json.dumps(meta, indent=2) + "\n")


# petloc.json's entries an export needs to answer
@dataclass(frozen=True)
class Metadata:
    format: str
    file: str
    classes: Classes
    image_size: int


def read_metadata(folder: Path) -> Metadata:
    """The petloc.json `petloc export` wrote in `folder`; a one-line error when it is missing or bad."""
    path = folder / METADATA
    try:
        meta = json.loads(read_bounded(path, SMALL_FILE_LIMIT))
        species = meta.get("species")
        found = Metadata(
            meta["format"],
            meta["file"],
            Classes.from_names(meta["classes"], species),
            int(meta["image_size"]),
        )
    except (OSError, UnreadableFile) as err:
        raise PetlocError(
            f"{path}: cannot be read ({err}); export the model with petloc export"
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise PetlocError(f"{path}: not petloc export's metadata ({err})") from None
    if found.format not in FORMATS:
        raise PetlocError(f"{path}: format {found.format!r} is not one of {', '.join(FORMATS)}")
    return found


EXPORT_SUFFIXES = tuple(f.suffix for f in FORMATS.values() if f.suffix)
# What `petloc predict` takes, for messages about a model it cannot find
PREDICT_TAKES = (
    "give a .keras file, an MLflow URI such as models:/petloc@champion, or what petloc export "
    f"wrote: its folder or its {'/'.join(EXPORT_SUFFIXES)} file"
)


def _export_kind(source: str | os.PathLike) -> str | None:
    """What `source` is of what `petloc export` wrote: its "folder", an export "file" (by its
    suffix), or None (a .keras file, a registered name, nothing there)."""
    path = Path(source)
    try:
        if path.is_dir() and (path / METADATA).exists():
            return "folder"
        if path.is_file() and path.suffix in EXPORT_SUFFIXES:
            return "file"
    except (OSError, ValueError):  # a name too long to be a path
        return None
    return None


def is_export(source: str | os.PathLike) -> bool:
    """Whether `source` is an export's folder or file (which only `petloc predict` runs)."""
    return _export_kind(source) is not None


def exported_predictor(source: str | os.PathLike) -> ForwardPredictor | None:
    """The predictor of what `petloc export` wrote, given its folder or its file (.tflite,
    .onnx), or None when `source` is neither (a .keras file, a registered name, ...)."""
    kind = _export_kind(source)
    if kind is None:
        return None
    path = Path(source)
    is_file = kind == "file"
    folder = path.parent if is_file else path
    meta = read_metadata(folder)
    if is_file and (folder / meta.file).resolve() != path.resolve():
        raise PetlocError(f"{source}: not the model {folder / METADATA} describes ({meta.file})")
    check_runtime(meta.format)
    try:
        forward = FORMATS[meta.format].run(folder / meta.file)
    except Exception as err:  # noqa: BLE001  (each runtime raises its own types for a bad file)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise PetlocError(f"{source}: cannot be loaded as {meta.format} ({first})") from None
    return ForwardPredictor(forward, meta.image_size, meta.classes)
