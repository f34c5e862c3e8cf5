"""Pictures of a model at work: the prediction gallery and the training curves."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from petloc.errors import PetlocError

TRUE_COLOUR = (0, 200, 0)  # RGB
PRED_COLOUR = (255, 0, 255)
RIGHT, WRONG = (0, 170, 0), (220, 0, 0)
TILE = 192
TILE_LABEL_CHARS = 16  # a longer class name is cut so that its score still fits on a tile


def draw_prediction(
    image: np.ndarray,
    true_box,
    pred_box,
    true_label: int,
    pred_label: int,
    score: float,
    iou: float,
    names: Sequence[str],
) -> np.ndarray:
    """One tile: true box green, predicted box magenta, label (of the class `names`) green
    when right and red when wrong (bottom left), IoU in the top-right corner. Boxes are normalised."""
    tile = cv2.resize(
        np.ascontiguousarray(image, dtype=np.uint8), (TILE, TILE), interpolation=cv2.INTER_LINEAR
    )
    for box, colour, thickness in ((true_box, TRUE_COLOUR, 2), (pred_box, PRED_COLOUR, 2)):
        x1, y1, x2, y2 = (round(float(v) * TILE) for v in box)
        cv2.rectangle(tile, (x1, y1), (x2, y2), colour, thickness)
    _label(
        tile,
        f"{_short(names[pred_label])} {score:.2f}",
        (4, TILE - 6),
        RIGHT if pred_label == true_label else WRONG,
    )
    text = f"IoU {iou:.2f}"
    (w, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    _label(tile, text, (TILE - w - 6, 16), (40, 40, 40))
    return tile


def _short(name: str) -> str:
    return name if len(name) <= TILE_LABEL_CHARS else name[: TILE_LABEL_CHARS - 1] + "~"


def _label(tile: np.ndarray, text: str, origin: tuple[int, int], colour) -> None:
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    x, y = origin
    cv2.rectangle(tile, (x - 2, y - h - 3), (x + w + 2, y + base), (255, 255, 255), -1)
    cv2.putText(tile, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)


def gallery(tiles: list[np.ndarray], columns: int = 4) -> np.ndarray:
    """Tiles in a grid with a 4 px white gutter, as one RGB image."""
    rows = -(-len(tiles) // columns)
    gap = 4
    sheet = np.full((rows * (TILE + gap) + gap, columns * (TILE + gap) + gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[
            gap + r * (TILE + gap) : gap + r * (TILE + gap) + TILE,
            gap + c * (TILE + gap) : gap + c * (TILE + gap) + TILE,
        ] = tile
    return sheet


def save_rgb(image: np.ndarray, path: Path) -> Path:
    """An RGB image written in the format of the path's suffix; OSError when it was not."""
    # cv2 reports failure only so
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: cannot write the image")
    return path


def save_new_png(image: np.ndarray, folder: Path, stem: str) -> Path:
    """An RGB image written as folder/STEM.png, or STEM-2.png, STEM-3.png, ... when that name
    is taken: never over an existing file (such as the photo itself). OSError when not written."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError("cannot encode the image as PNG")
    for n in itertools.count(1):
        path = folder / (f"{stem}.png" if n == 1 else f"{stem}-{n}.png")
        try:
            # "x": refuses a name that exists, even one made a moment ago; opened apart from the
            # write so that only a taken name moves on to the next
            file = open(path, "xb")  # noqa: SIM115  (closed by the `with` below)
        except FileExistsError:
            continue
        with file:
            try:
                file.write(encoded.tobytes())
            except OSError:
                path.unlink(missing_ok=True)  # no half-written copy left behind
                raise
        return path
    raise AssertionError("itertools.count never ends")


def writable_folder(path: str | Path) -> Path:
    """`path` as a folder that exists and takes new files (made when missing); a one-line
    `PetlocError` saying why not."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise PetlocError(f"{folder}: is a file, expected a folder for the annotated copies")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # the one sure test of "can write here", also for root
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise PetlocError(
            f"{folder}: cannot write annotated copies there ({err.strerror or err})"
        ) from None
    return folder


def plot_curves(history: dict[str, list[float]], path: Path) -> Path:
    """The training curves written as an image at `path`."""
    import matplotlib.pyplot as plt

    fig = curves_figure(history)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def curves_figure(history: dict[str, list[float]]):
    """Loss and val mIoU / accuracy per epoch, side by side. Every epoch is a marker, so a run
    of one or two epochs still shows its points (a line needs two)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for axes, keys in (
        (left, ("loss", "val_loss")),
        (right, ("miou", "val_miou", "accuracy", "val_accuracy")),
    ):
        for key in (k for k in keys if history.get(k)):
            axes.plot(
                range(1, len(history[key]) + 1), history[key], marker="o", markersize=4, label=key
            )
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        axes.legend()
    left.set(title="loss", xlabel="epoch")
    right.set(title="mIoU and accuracy", xlabel="epoch", ylim=(0, 1))
    # Fixed margins: tight_layout drew the whole figure once more just to measure it.
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.12, top=0.92, wspace=0.18)
    return fig


def draw_box_on_photo(image: np.ndarray, prediction) -> np.ndarray:
    """The photo at its own size with the predicted head box and 'label score' drawn."""
    photo = np.ascontiguousarray(image, dtype=np.uint8).copy()
    x1, y1, x2, y2 = (round(v) for v in prediction.box)
    thickness = max(2, round(max(photo.shape[:2]) / 200))
    cv2.rectangle(photo, (x1, y1), (x2, y2), PRED_COLOUR, thickness)
    _label(
        photo,
        f"{prediction.label} {prediction.score:.2f}",
        (max(x1, 2) + 2, max(y1, 20) - 4),
        (40, 40, 40),
    )
    return photo


def plot_pareto(points: list[dict], path: Path, miou: str, latency: str) -> Path:
    """Val mIoU against batch-1 latency, a dot per trial, the Pareto front joined (points
    carry `trial`, their val mIoU under key `miou`, their latency under `latency`, and
    `pareto` "yes"/"no")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(
        [p[latency] for p in points],
        [p[miou] for p in points],
        color="tab:gray",
        label="trial",
    )
    front = sorted((p for p in points if p["pareto"] == "yes"), key=lambda p: p[latency])
    ax.plot(
        [p[latency] for p in front],
        [p[miou] for p in front],
        "o-",
        color="tab:red",
        label="Pareto front",
    )
    for p in points:
        ax.annotate(
            str(p["trial"]),
            (p[latency], p[miou]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    ax.set(xlabel="latency, batch 1 (ms)", ylabel="val mIoU", title="val mIoU against latency")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_confusion(true_labels, pred_labels, names: Sequence[str], path: Path) -> Path:
    """The confusion matrix (rows the true class, columns the predicted one), each row as
    shares of that class's images so that rare classes read as clearly as common ones; the
    counts are written in the cells while there are few classes. The figure grows with the
    classes, so 37 breed names stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    n = len(names)
    counts = confusion_matrix(true_labels, pred_labels, labels=list(range(n)))
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.28 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ticks = list(range(n))
    font = 9 if n <= 12 else 7
    ax.set_xticks(ticks, list(names), rotation=90, fontsize=font)
    ax.set_yticks(ticks, list(names), fontsize=font)
    ax.set(xlabel="predicted class", ylabel="true class", title="confusion (share of each row)")
    if n <= 12:
        for (row, col), count in np.ndenumerate(counts):
            colour = "white" if shares[row, col] > 0.5 else "black"
            ax.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=font)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
