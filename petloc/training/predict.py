"""Using a trained localiser: load it from a `.keras` file, predict labels, scores and pixel boxes."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import cv2
import keras
import numpy as np

import petloc.model  # registers petloc's custom layers and losses for loading
from petloc.data.classes import Classes
from petloc.data.images import BadImage, read_image
from petloc.errors import PetlocError
from petloc.files import check_regular
from petloc.training.evaluate import forward_pass
from petloc.training.gallery import draw_box_on_photo, save_new_png
from petloc.training.model_needs import import_needed

# output name -> values per image; "cls" scores each of the model's classes (`model_classes`)
EXPECTED_OUTPUTS: dict[str, int | None] = {"cls": None, "box": 4}


@dataclass(frozen=True)
class Prediction:
    label: str  # the name of one of the model's classes
    score: float  # probability of that label
    box: tuple[float, float, float, float]  # pixels of the original image

    def to_dict(self, warnings: tuple[str, ...] = ()) -> dict:
        """The answer as petloc prints and serves it; the decoder's `warnings`, if any, as one `warning`."""
        answer = {
            "label": self.label,
            "score": round(self.score, 4),
            "box": [round(v, 1) for v in self.box],
        }
        return {**answer, "warning": "; ".join(warnings)} if warnings else answer


# A float32 batch of square RGB pixels (0-255) -> {"cls": scores, "box": normalised corners}
Forward = Callable[[np.ndarray], Mapping[str, Any]]


class ForwardPredictor:
    """Labels, scores and pixel boxes for RGB images of any size, from any forward pass of a
    localiser: the Keras model's (`Predictor`) or an exported one's (petloc/training/export.py)."""

    def __init__(self, forward: Forward, image_size: int, classes: Classes):
        self.image_size = image_size
        self.classes = classes
        self._forward = forward

    def predict(
        self,
        images: list[np.ndarray],
        batch_size: int = 32,
        sizes: list[tuple[int, int]] | None = None,
    ) -> list[Prediction]:
        """RGB uint8 images (H x W x 3), any sizes; boxes come back in each image's pixels, or
        in pixels of `sizes` (width, height) when the images are shrunk copies of larger ones."""
        if not len(images):
            return []
        sizes = sizes or [(im.shape[1], im.shape[0]) for im in images]
        batch = np.stack([self.model_input(im) for im in images])
        results = []
        for start in range(0, len(batch), batch_size):
            results += self.predict_resized(
                batch[start : start + batch_size], sizes[start : start + batch_size]
            )
        return results

    def model_input(self, image: np.ndarray) -> np.ndarray:
        """One RGB image resized to the model's square input."""
        return cv2.resize(image, (self.image_size, self.image_size), interpolation=cv2.INTER_AREA)

    def predict_resized(self, batch: np.ndarray, sizes: list[tuple[int, int]]) -> list[Prediction]:
        """Images already at the model's input size, answered in pixels of `sizes` (width, height)."""
        out = self._forward(np.asarray(batch, np.float32))
        probs, boxes = np.asarray(out["cls"]), np.asarray(out["box"])
        results = []
        for (w, h), p, b in zip(sizes, probs, boxes, strict=True):
            x1, x2 = sorted((float(b[0]) * w, float(b[2]) * w))
            y1, y2 = sorted((float(b[1]) * h, float(b[3]) * h))
            label = int(p.argmax())
            results.append(Prediction(self.classes.names[label], float(p[label]), (x1, y1, x2, y2)))
        return results


class Predictor(ForwardPredictor):
    """A trained Keras localiser that takes RGB images of any size."""

    def __init__(self, model: keras.Model):
        self.model = model
        super().__init__(
            forward_pass(model), int(model.input_shape[1]), petloc.model.model_classes(model)
        )


def load_keras_file(path: str | Path) -> keras.Model:
    """A petloc localiser from a `.keras` file (safe mode: no code runs from the file)."""
    if not Path(path).exists():
        raise PetlocError(
            f"{path}: no such model file (give a .keras file or an MLflow URI such as models:/petloc@champion)"
        )
    check_regular(path)  # a FIFO or device: its own line (Keras reads the file by its name)
    if not zipfile.is_zipfile(path):  # Keras would call it "File not found"
        raise PetlocError(
            f"{path}: cannot be read as a Keras model "
            "(not a .keras zip archive: truncated, corrupt or another kind of file)"
        )
    import_needed([path], str(path))  # a plug-in backbone's own layers (petloc/plugins.py)
    return checked_localiser(str(path), lambda: keras.saving.load_model(path, safe_mode=True))


def checked_localiser(source: str, load) -> keras.Model:
    """`load()`'s model, a one-line PetlocError naming `source` unless it loads and is a localiser."""
    try:
        model = load()
    except PetlocError:
        raise
    # Keras raises many types for a bad file (safe_mode: ValueError); all mean the same to a user
    except Exception as err:  # noqa: BLE001  (whatever a bad file raises: one line, see above)
        raise PetlocError(
            f"{source}: not a loadable Keras model ({str(err).splitlines()[0][:200]})"
        ) from None
    if problem := localiser_problem(model):
        raise PetlocError(f"{source}: not a petloc localiser ({problem})")
    return model


def localiser_problem(model) -> str | None:
    """Why `model` is not a petloc localiser (square RGB images in; "cls" (a score for each
    of its classes, at least 2) and "box" (4) out), or None."""
    try:
        inputs, outputs = model.input_shape, model.output
    except (AttributeError, ValueError):
        return "it has no defined input and output"
    if not isinstance(outputs, dict) or set(outputs) != set(EXPECTED_OUTPUTS):
        found = (
            ", ".join(sorted(outputs))
            if isinstance(outputs, dict)
            else f"shape {model.output_shape}"
        )
        return f"its output is {found}; expected 'cls' (class scores) and 'box' (4 corners)"
    cls_shape = tuple(outputs["cls"].shape)
    if len(cls_shape) != 2 or not cls_shape[1] or cls_shape[1] < 2:
        return f"its 'cls' output has shape {cls_shape}; expected (None, N) for N >= 2 classes"
    for name, width in EXPECTED_OUTPUTS.items():
        width = width or len(petloc.model.model_classes(model))
        if tuple(outputs[name].shape[1:]) != (width,):
            return f"its '{name}' output has shape {tuple(outputs[name].shape)}; expected (None, {width})"
    if not (
        isinstance(inputs, tuple)
        and len(inputs) == 4
        and inputs[3] == 3
        and inputs[1]
        and inputs[1] == inputs[2]
    ):
        return f"its input has shape {inputs}; expected square RGB images (None, N, N, 3)"
    return None


def predict_files(
    predictor: ForwardPredictor, paths: Iterable[str], out: Path | None = None, batch_size: int = 32
) -> Iterator[dict]:
    """One row per image file, in order: its answer (with a `warning` when the decoder had to
    repair it), or `error`; with `out`, an annotated copy beside the others, never over a file.
    Files are decoded on worker threads and answered `batch_size` at a time, so memory holds
    one batch of photos however many files there are."""
    paths = iter(paths)
    with ThreadPoolExecutor(max_workers=2) as pool:
        try:
            while chunk := list(islice(paths, batch_size)):
                reads = pool.map(
                    lambda path: _read(predictor, path, keep_photo=out is not None), chunk
                )
                yield from _answer_chunk(predictor, chunk, reads, out)
        finally:  # stopped (Ctrl+C, SIGTERM): the photos not yet begun are not decoded first
            pool.shutdown(cancel_futures=True)


@dataclass
class _Read:
    """One file after decoding: the model's input, or the reason it has none."""

    error: str = ""
    resized: np.ndarray | None = None
    size: tuple[int, int] = (0, 0)
    warnings: tuple[str, ...] = ()
    photo: np.ndarray | None = None  # kept only to draw an annotated copy


def _read(predictor: ForwardPredictor, path: str, keep_photo: bool) -> _Read:
    try:
        image = read_image(path)
    except BadImage as err:
        return _Read(error=str(err))
    pixels = image.pixels
    return _Read(
        resized=predictor.model_input(pixels),
        size=(pixels.shape[1], pixels.shape[0]),
        warnings=image.warnings,
        photo=pixels if keep_photo else None,
    )


def _answer_chunk(
    predictor: ForwardPredictor, paths: list[str], reads: Iterable[_Read], out: Path | None
) -> Iterator[dict]:
    reads = list(reads)
    good = [(r.resized, r.size) for r in reads if r.resized is not None]  # the reads without error
    preds = iter(
        predictor.predict_resized(np.stack([x for x, _ in good]), [size for _, size in good])
        if good
        else []
    )
    for path, read in zip(paths, reads, strict=True):
        if read.error:
            yield {"image": path, "error": read.error}
            continue
        pred = next(preds)
        row = {"image": path, **pred.to_dict(read.warnings)}
        if out:
            assert read.photo is not None  # kept by _read when there is an `out`
            try:
                save_new_png(draw_box_on_photo(read.photo, pred), out, Path(path).stem)
            except OSError as err:
                row = {
                    "image": path,
                    "error": f"cannot write the annotated copy: {err.strerror or err}",
                }
        yield row
