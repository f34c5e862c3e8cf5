"""Pictures of a model at work: the prediction gallery and the training curves."""

from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from petloc.errors import PetlocError
from petloc.quantities import SCORE
from petloc.report import figure
from petloc.training.figures import new_figure, save_figure

TRUE_COLOUR = (0, 200, 0)  # RGB
PRED_COLOUR = (255, 0, 255)
RIGHT, WRONG = (0, 150, 0), (220, 0, 0)
WORST_COLOUR = (255, 140, 0)
TILE_INCHES = 2.4  # a tile's width; 192 px at the gallery's 80 dpi
TITLE_INCHES = 0.62  # three lines of title above each photo
HEADER_INCHES = 0.95  # the legend and the line that explains the sample
LABEL_CHARS = (
    26  # the longest breed name; a longer class name is cut so that the title fits its tile
)


@dataclass(frozen=True)
class GalleryPick:
    """Which validation photos a gallery shows: `worst` (wrong class first, then lowest IoU)
    and `spread` (over the true classes, the least shown class first)."""

    worst: list[int]
    spread: list[int]

    @property
    def indices(self) -> list[int]:
        return self.worst + self.spread


def pick_for_gallery(
    true_labels: np.ndarray,
    pred_labels: np.ndarray,
    ious: np.ndarray,
    count: int,
    seed: int = 0,
) -> GalleryPick:
    """`count` photos to show: half of them the worst answers, the others spread over the true
    classes so that every class shows up (37 breeds: as many as fit). The first photos of a
    set sorted by class are all one class, and a model's errors hide among its answers, so
    neither is left to the order of the files. Seeded: the same answers pick the same photos."""
    true_labels, pred_labels = np.asarray(true_labels), np.asarray(pred_labels)
    n = len(true_labels)
    count = min(max(count, 0), n)
    rank = np.random.default_rng(seed).permutation(n)  # ties broken the same way every time
    right = (pred_labels == true_labels).astype(int)
    # np.lexsort sorts by its last key first: wrong class, then IoU, then the seeded rank
    worst = [int(i) for i in np.lexsort((rank, np.asarray(ious, float), right))[: count // 2]]
    return GalleryPick(worst, _spread(true_labels, set(worst), count - len(worst), rank))


def _spread(labels: np.ndarray, taken: set[int], count: int, rank: np.ndarray) -> list[int]:
    """`count` photos not in `taken`, one class at a time: each time the class shown least so
    far (counting `taken`), its photos in the seeded order."""
    pools = {
        int(c): sorted(
            (i for i in np.flatnonzero(labels == c) if i not in taken), key=rank.__getitem__
        )
        for c in np.unique(labels)
    }
    shown = {c: sum(1 for i in taken if labels[i] == c) for c in pools}
    order = sorted(pools, key=lambda c: rank[pools[c][0]] if pools[c] else 0)  # seeded, not by name
    chosen: list[int] = []
    while len(chosen) < count:
        c = min((c for c in order if pools[c]), key=lambda c: shown[c])
        chosen.append(int(pools[c].pop(0)))
        shown[c] += 1
    return sorted(chosen, key=lambda i: (labels[i], i))  # a class's photos side by side


@dataclass(frozen=True)
class Answers:
    """A model's answers on photos next to the truth (boxes normalised [x1, y1, x2, y2])."""

    images: np.ndarray
    true_boxes: np.ndarray
    pred_boxes: np.ndarray
    true_labels: np.ndarray
    pred_labels: np.ndarray
    scores: np.ndarray  # the predicted class's probability
    ious: np.ndarray
    names: Sequence[str]


def gallery_figure(answers: Answers, pick: GalleryPick):
    """The picked photos as titled tiles (true class, predicted class and its score, IoU) with
    both boxes drawn, under a legend of the boxes, the title colours and the worst's frame.
    A matplotlib Figure on its own canvas (no pyplot: nothing global to close)."""
    indices = pick.indices
    columns = max(1, min(len(indices), max(4, math.ceil(math.sqrt(len(indices))))))
    rows = -(-len(indices) // columns)
    tile_h = TILE_INCHES + TITLE_INCHES
    width, height = max(columns, 4) * TILE_INCHES, HEADER_INCHES + rows * tile_h
    fig = new_figure((width, height))
    for n, i in enumerate(indices):
        r, c = divmod(n, columns)
        bottom = height - HEADER_INCHES - (r + 1) * tile_h + 0.05
        ax = fig.add_axes(
            (
                (c * TILE_INCHES + 0.08) / width,
                bottom / height,
                (TILE_INCHES - 0.16) / width,
                (TILE_INCHES - 0.1) / height,
            )
        )
        _tile(ax, answers, i, worst=n < len(pick.worst))
    fig.legend(handles=_legend_handles(), loc="upper center", ncol=3, fontsize=8, frameon=False)
    fig.text(
        0.5,
        1 - 0.5 / height,  # under the legend's two rows
        f"{len(pick.worst)} worst answers (wrong class first, then lowest IoU), then "
        f"{len(pick.spread)} photos spread over the classes\n"
        "score: the predicted class's probability; IoU: overlap of the two boxes (1 = exact)",
        ha="center",
        va="top",
        fontsize=8,
    )
    return fig


def _tile(ax, answers: Answers, i: int, worst: bool) -> None:
    from matplotlib.patches import Rectangle

    image = answers.images[i]
    side_y, side_x = image.shape[:2]
    ax.imshow(image)
    for box, colour in ((answers.true_boxes[i], TRUE_COLOUR), (answers.pred_boxes[i], PRED_COLOUR)):
        x1, y1, x2, y2 = (float(v) for v in box)
        ax.add_patch(
            Rectangle(
                (x1 * side_x - 0.5, y1 * side_y - 0.5),
                (x2 - x1) * side_x,
                (y2 - y1) * side_y,
                fill=False,
                edgecolor=_rgb(colour),
                linewidth=2,
            )
        )
    true, pred = int(answers.true_labels[i]), int(answers.pred_labels[i])
    ax.set_title(
        f"true {_short(answers.names[true])}\n"
        f"pred {_short(answers.names[pred])}\n"
        f"score {figure(SCORE, float(answers.scores[i]))}   IoU {float(answers.ious[i]):.2f}",
        fontsize=8,
        color=_rgb(RIGHT if pred == true else WRONG),
        linespacing=1.1,
    )
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set(
            edgecolor=_rgb(WORST_COLOUR) if worst else "lightgray", linewidth=3 if worst else 1
        )


def _legend_handles() -> list:
    from matplotlib.patches import Patch

    return [
        Patch(fill=False, edgecolor=_rgb(TRUE_COLOUR), linewidth=2, label="true box"),
        Patch(fill=False, edgecolor=_rgb(PRED_COLOUR), linewidth=2, label="predicted box"),
        Patch(fill=False, edgecolor=_rgb(WORST_COLOUR), linewidth=3, label="frame: a worst answer"),
        Patch(color=_rgb(RIGHT), label="green title: right class"),
        Patch(color=_rgb(WRONG), label="red title: wrong class"),
    ]


def _rgb(colour: tuple[int, int, int]) -> tuple[float, float, float]:
    """An RGB colour of 0-255 as matplotlib takes it."""
    red, green, blue = colour
    return red / 255, green / 255, blue / 255


def figure_rgb(fig) -> np.ndarray:
    """A figure drawn at the gallery's 80 dpi, as an RGB image."""
    fig.set_dpi(80)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _short(name: str) -> str:
    return name if len(name) <= LABEL_CHARS else name[: LABEL_CHARS - 1] + "~"


def _label(tile: np.ndarray, text: str, origin: tuple[int, int], colour) -> None:
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    x, y = origin
    cv2.rectangle(tile, (x - 2, y - h - 3), (x + w + 2, y + base), (255, 255, 255), -1)
    cv2.putText(tile, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)


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
    return save_figure(curves_figure(history), path, tight=False)


def curves_figure(history: dict[str, list[float]]):
    """Loss and val mIoU / accuracy per epoch, side by side. Every epoch is a marker, so a run
    of one or two epochs still shows its points (a line needs two)."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure((10, 4))
    left, right = fig.subplots(1, 2)
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
        f"{prediction.label} {figure(SCORE, prediction.score)}",
        (max(x1, 2) + 2, max(y1, 20) - 4),
        (40, 40, 40),
    )
    return photo


def plot_pareto(
    points: list[dict], path: Path, miou: str, latency: str, labels: dict[str, str] | None = None
) -> Path:
    """A score against a cost (a localiser's val mIoU against its batch-1 latency), a dot per
    trial, the Pareto front joined (points carry `trial`, the score under key `miou`, the
    cost under `latency`, and `pareto` "yes"/"no"). `labels`: the axes' words for those
    keys, each key itself where none is given."""
    fig = new_figure((6, 4))
    ax = fig.subplots()
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
    named = labels or {}
    y_label, x_label = named.get(miou, miou), named.get(latency, latency)
    ax.set(xlabel=x_label, ylabel=y_label, title=f"{y_label} against {x_label}")
    ax.legend()
    return save_figure(fig, path)


def plot_confusion(true_labels, pred_labels, names: Sequence[str], path: Path) -> Path:
    """The confusion matrix (rows the true class, columns the predicted one), each row as
    shares of that class's images so that rare classes read as clearly as common ones; the
    counts are written in the cells while there are few classes. The figure grows with the
    classes, so 37 breed names stay readable."""
    from sklearn.metrics import confusion_matrix

    n = len(names)
    counts = confusion_matrix(true_labels, pred_labels, labels=list(range(n)))
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.28 * n + 2.5)
    fig = new_figure((side + 1, side))
    ax = fig.subplots()
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
    return save_figure(fig, path)
