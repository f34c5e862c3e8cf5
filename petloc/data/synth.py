"""Synthetic cartoon pets with exact head boxes, for tests, demos and smoke runs.

Each image shows one cat or dog (body, legs, tail, head) on a cluttered background.
Cats and dogs share one palette of fur colours and textures (plain, stripes, spots,
patches), so the class has to be read from SHAPE: cats have pointed upright ears, a
round flat face, a small nose and whiskers; dogs have floppy or rounded ears, a broader
head and a long protruding muzzle with a big nose. Scale, position, tilt, head aspect,
clutter and partial occlusion vary per image.

The head box is the exact extent of the head's shapes (ears included), clipped to the
image, so it is tight by construction; an occluder drawn over the head does not shrink it.

Class balance: about 30% cats / 70% dogs, drawn independently per image (mirrors the
real cats_dogs data). Image `i` of `generate(seed=s)` has its own generator seeded with
`(s, i)`, so the same seed always gives byte-identical files.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from petloc.data.classes import SPECIES
from petloc.data.records import annotation_line
from petloc.files import SMALL_FILE_LIMIT, UnreadableFile, read_bounded

DOG_SHARE = 0.7
HEAD_SIZE_RANGE = (0.16, 0.5)  # longest side of the head box, as a share of the image side
OCCLUSION_PROB = 0.2
JPEG_QUALITY = 90
MIN_SIZE = 32  # px; below this the smallest heads are a few pixels wide
_SHIFT = 4  # fractional bits for cv2 drawing: sub-pixel accurate shapes

Colour = tuple[float, float, float]
Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
FUR_COLOURS = np.array(  # RGB, shared by cats and dogs
    [
        (210, 120, 50),
        (35, 30, 30),
        (235, 230, 220),
        (130, 130, 135),
        (110, 70, 40),
        (225, 200, 160),
        (200, 160, 80),
        (170, 120, 70),
        (70, 70, 75),
    ],
    dtype=np.float32,
)
PINK, CREAM, BLACK, WHITE = (225, 140, 150), (240, 225, 200), (15, 12, 12), (250, 250, 250)
CAT_EYES = [(110, 180, 60), (220, 200, 40), (210, 140, 30), (90, 150, 220)]
DOG_EYES = [(70, 40, 20), (120, 70, 30), (40, 25, 15)]


@dataclass
class Head:
    """A head in local units (face half-height 1, y down), drawn back to front.

    Every part belongs to the head silhouette, hence to the box. A part's colour is None
    for plain fur, else it is mixed into the fur by `mix` (1.0 = solid colour).
    """

    parts: list[tuple[np.ndarray, Colour | None, float]] = field(default_factory=list)
    strokes: list[tuple[np.ndarray, Colour, float]] = field(default_factory=list)  # width in units


def _ellipse(cx, cy, rx, ry, angle_deg=0.0, n=40) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    a = np.deg2rad(angle_deg)
    return np.stack([cx + x * np.cos(a) - y * np.sin(a), cy + x * np.sin(a) + y * np.cos(a)], 1)


def _on_ellipse(rx, ry, angle_deg) -> tuple[float, float]:
    a = np.deg2rad(angle_deg)
    return rx * np.cos(a), ry * np.sin(a)


def _eye(head: Head, x, y, radius, iris: Colour, slit: bool) -> None:
    head.parts.append((_ellipse(x, y, radius * (1.5 if slit else 1.0), radius), iris, 1.0))
    pupil = (radius * 0.3, radius * 0.9) if slit else (radius * 0.6, radius * 0.6)
    head.parts.append((_ellipse(x, y, *pupil), BLACK, 1.0))
    head.parts.append(
        (_ellipse(x + radius * 0.3, y - radius * 0.35, radius * 0.2, radius * 0.2), WHITE, 1.0)
    )


def _cat_head(rng: np.random.Generator) -> Head:
    """Round flat face, pointed upright ears, small pink nose, whiskers."""
    head, a, b = Head(), rng.uniform(1.0, 1.25), 1.0
    for side in (-1, 1):
        inner = _on_ellipse(a, b, -90 + side * rng.uniform(12, 28))
        outer = _on_ellipse(a, b, -90 + side * rng.uniform(60, 80))
        tip = (side * a * rng.uniform(0.5, 0.85), -b - rng.uniform(0.6, 0.95))
        ear = np.array([inner, tip, outer])
        centre = ear.mean(0)
        head.parts.append((ear, None, 0.0))
        head.parts.append((centre + 0.55 * (ear - centre), PINK, rng.uniform(0.4, 0.8)))
    head.parts.append((_ellipse(0, 0, a, b), None, 0.0))
    head.parts.append((_ellipse(0, 0.42, 0.4, 0.25), CREAM, rng.uniform(0.0, 0.5)))
    iris = CAT_EYES[rng.integers(len(CAT_EYES))]
    for side in (-1, 1):
        _eye(head, side * 0.38 * a, -0.12, rng.uniform(0.11, 0.15), iris, slit=True)
    head.parts.append((np.array([(-0.09, 0.24), (0.09, 0.24), (0, 0.35)]), PINK, 1.0))
    head.strokes.append((np.array([(-0.16, 0.52), (0, 0.44), (0.16, 0.52)]), BLACK, 0.03))
    whisker = WHITE if rng.random() < 0.5 else BLACK
    for side in (-1, 1):
        for k in range(3):
            line = np.array([(side * 0.2, 0.38 + 0.05 * k), (side * 0.85 * a, 0.22 + 0.14 * k)])
            head.strokes.append((line, whisker, 0.025))
    return head


def _dog_head(rng: np.random.Generator) -> Head:
    """Broad head, floppy or rounded ears, long protruding muzzle with a big black nose."""
    head, a, b = Head(), rng.uniform(1.1, 1.45), 1.0
    ear_colour, ear_mix = (40, 25, 15), rng.choice([0.0, 0.5])
    floppy = rng.random() < 0.75
    ears = []
    for side in (-1, 1):
        if floppy:
            ear = _ellipse(
                side * a * rng.uniform(0.85, 1.0),
                rng.uniform(-0.05, 0.3),
                rng.uniform(0.22, 0.32),
                rng.uniform(0.55, 0.8),
                side * rng.uniform(-30, 5),
            )
        else:  # rounded, half-upright
            ear = _ellipse(
                side * a * 0.62, -0.9, rng.uniform(0.25, 0.32), rng.uniform(0.3, 0.4), side * 25
            )
        ears.append((ear, ear_colour, ear_mix))
    face = (_ellipse(0, 0, a, b), None, 0.0)
    # floppy ears hang in front of the face
    head.parts += [face, *ears] if floppy else [*ears, face]
    muzzle_y, muzzle_ry = rng.uniform(0.45, 0.6), rng.uniform(0.45, 0.6)
    muzzle = _ellipse(0, muzzle_y, a * rng.uniform(0.42, 0.58), muzzle_ry)
    head.parts.append((muzzle, CREAM, rng.uniform(0.2, 0.7)))
    if rng.random() < 0.4:
        head.parts.append((_ellipse(0, muzzle_y + muzzle_ry * 0.85, 0.14, 0.2), PINK, 1.0))
    iris = DOG_EYES[rng.integers(len(DOG_EYES))]
    for side in (-1, 1):
        _eye(head, side * 0.4 * a, -0.25, rng.uniform(0.1, 0.14), iris, slit=False)
    nose_y = muzzle_y - muzzle_ry * 0.3
    nose = _ellipse(0, nose_y, rng.uniform(0.17, 0.23), rng.uniform(0.11, 0.14))
    head.parts.append((nose, BLACK, 1.0))
    mouth = np.array([(-0.25, muzzle_y + 0.25), (0, muzzle_y + 0.15), (0.25, muzzle_y + 0.25)])
    head.strokes.append((np.array([(0, nose_y), (0, muzzle_y + 0.15)]), BLACK, 0.04))
    head.strokes.append((mouth, BLACK, 0.04))
    return head


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise with unit standard deviation."""
    noise = cv2.GaussianBlur(
        rng.standard_normal((size, size)).astype(np.float32), (0, 0), max(sigma, 0.5)
    )
    return noise / (noise.std() + 1e-6)


def _fur_texture(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Full-frame fur (float RGB): a random palette colour, plain, striped, spotted or patched."""
    base = FUR_COLOURS[rng.integers(len(FUR_COLOURS))] + rng.uniform(-15, 15, 3)
    accent = (
        base * rng.uniform(0.3, 0.6)
        if rng.random() < 0.6
        else FUR_COLOURS[rng.integers(len(FUR_COLOURS))]
    )
    kind = rng.integers(4)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    amount: np.ndarray  # how much of the accent colour, per pixel
    if kind == 0:
        amount = np.zeros((size, size), np.float32)
    elif kind == 1:  # stripes, wavy so they read as fur
        angle, period = rng.uniform(0, np.pi), scale * rng.uniform(0.3, 0.6)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period * 2 * np.pi
        amount = np.clip(
            (np.sin(phase + 1.5 * _smooth_noise(rng, size, scale * 0.4)) - 0.1) * 2, 0, 1
        )
    elif kind == 2:  # spots
        spots = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(8, 30))):
            centre = tuple(int(v) for v in rng.integers(0, size, 2))
            cv2.circle(spots, centre, max(1, int(scale * rng.uniform(0.1, 0.3))), 255, -1)
        amount = cv2.GaussianBlur(spots, (0, 0), 1.0).astype(np.float32) / 255
    else:  # large patches
        amount = np.clip(_smooth_noise(rng, size, scale * 0.6) * 2, 0, 1)
    texture = base * (1 - amount[..., None]) + accent * amount[..., None]
    texture = texture * (1 + 0.1 * _smooth_noise(rng, size, 0.7)[..., None])
    return texture.astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random gradient with random shapes, lines and soft noise (float RGB)."""
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    t = (xx * np.cos(angle) + yy * np.sin(angle) + 1.5) / 3
    start, end = rng.uniform(30, 230, 3), rng.uniform(30, 230, 3)
    image = np.ascontiguousarray(start * (1 - t[..., None]) + end * t[..., None], dtype=np.float32)
    for _ in range(int(rng.integers(1, 6))):
        # half-way to the backdrop colour: clutter, but less eye-catching than the pet
        colour = tuple(float(c) for c in (rng.uniform(0, 255, 3) + (start + end) / 2) / 2)
        p = rng.uniform(-0.1, 1.1, (2, 2)) * size
        kind = rng.integers(3)
        if kind == 0:
            cv2.line(
                image, _px(p[0]), _px(p[1]), colour, int(rng.integers(1, 6)), cv2.LINE_AA, _SHIFT
            )
        elif kind == 1:
            cv2.rectangle(image, _px(p[0]), _px(p[1]), colour, -1, cv2.LINE_AA, _SHIFT)
        else:
            axes = _px(rng.uniform(0.03, 0.25, 2) * size)
            cv2.ellipse(
                image, _px(p[0]), axes, rng.uniform(0, 180), 0, 360, colour, -1, cv2.LINE_AA, _SHIFT
            )
    return image + rng.uniform(3, 12) * _smooth_noise(rng, size, rng.uniform(0.5, 3))[..., None]


def _fixed(points) -> np.ndarray:
    """Pixel coordinates as cv2's fixed-point integers."""
    return np.round(np.asarray(points) * (1 << _SHIFT)).astype(np.int32)


def _px(point) -> tuple[int, int]:
    """One point (or a pair of axes) in cv2's fixed-point integers."""
    x, y = (int(v) for v in _fixed(point))
    return x, y


def _paint_polygon(image, layer, silhouette, polygon, colour, mix) -> None:
    """Blends fur (or fur mixed with a colour) into the polygon, in place, only within its bounds."""
    low = np.maximum(np.floor(polygon.min(0)).astype(int) - 1, 0)
    # (width, height)
    high = np.minimum(np.ceil(polygon.max(0)).astype(int) + 2, image.shape[1::-1])
    if (high <= low).any():
        return
    (x0, y0), (x1, y1) = low, high
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(mask, [_fixed(polygon - low)], 255, cv2.LINE_AA, _SHIFT)
    alpha = mask.astype(np.float32)[..., None] / 255
    patch = layer[y0:y1, x0:x1]
    if colour is not None:
        patch = patch * (1 - mix) + np.asarray(colour, np.float32) * mix
    image[y0:y1, x0:x1] = _blend(image[y0:y1, x0:x1], patch, alpha)
    np.maximum(silhouette[y0:y1, x0:x1], alpha[..., 0], out=silhouette[y0:y1, x0:x1])


def _blend(image: np.ndarray, layer: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return image * (1 - alpha) + layer * alpha


def _place_head(rng: np.random.Generator, head: Head, size: int):
    """Random tilt, scale and position; returns a local->pixel mapping and the pixel scale."""
    tilt = np.deg2rad(rng.uniform(-20, 20))
    rotation = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]])
    points = np.concatenate([p for p, _, _ in head.parts]) @ rotation.T
    low, high = points.min(0), points.max(0)
    scale = rng.uniform(*HEAD_SIZE_RANGE) * size / (high - low).max()
    extent = (high - low) * scale
    corner = rng.uniform(-0.15 * extent, size - 0.85 * extent)  # up to 15% may leave the image
    offset = corner - low * scale
    return (lambda local: (np.asarray(local) @ rotation.T) * scale + offset), scale


def _draw_body(
    rng: np.random.Generator, image: np.ndarray, fur: np.ndarray, to_px, scale: float, is_cat: bool
) -> np.ndarray:
    """Body ellipse below/beside the head, legs and a tail, in the same fur, shaded darker
    so the head stands out from it."""
    side = rng.choice([-1, 1])
    cx, cy = to_px((side * rng.uniform(0.0, 1.6), rng.uniform(1.0, 1.6)))
    rx, ry = scale * rng.uniform(1.4, 2.4), scale * rng.uniform(0.9, 1.3)
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.ellipse(
        mask,
        _px((cx, cy)),
        _px((rx, ry)),
        rng.uniform(-20, 20),
        0,
        360,
        255,
        -1,
        cv2.LINE_AA,
        _SHIFT,
    )
    width = max(1, int(scale * (0.25 if is_cat else 0.35)))
    for x in cx + rx * rng.uniform(-0.8, 0.8, int(rng.integers(2, 5))):  # legs
        top, length = cy + ry * 0.5, scale * rng.uniform(0.6, 1.2)
        cv2.line(mask, _px((x, top)), _px((x, top + length)), 255, width, cv2.LINE_AA, _SHIFT)
    base = np.array([cx + side * rx * 0.9, cy])
    bend = base + scale * np.array([side * rng.uniform(0.4, 0.9), -rng.uniform(0.2, 1.0)])
    tip = bend + scale * np.array(
        [side * rng.uniform(-0.2, 0.4), -rng.uniform(0.3, 1.0 if is_cat else 0.4)]
    )
    cv2.polylines(
        mask, [_fixed(np.array([base, bend, tip]))], False, 255, width, cv2.LINE_AA, _SHIFT
    )
    return _blend(image, fur * rng.uniform(0.6, 0.85), mask.astype(np.float32)[..., None] / 255)


def _draw_head(image: np.ndarray, fur: np.ndarray, head: Head, to_px, scale: float) -> np.ndarray:
    """Draws the head in place; returns its silhouette (bool mask)."""
    silhouette = np.zeros(image.shape[:2], np.float32)
    for polygon, colour, mix in head.parts:
        _paint_polygon(image, fur, silhouette, to_px(polygon), colour, mix)
    for line, colour, width in head.strokes:
        thickness = max(1, round(width * scale))
        cv2.polylines(image, [_fixed(to_px(line))], False, colour, thickness, cv2.LINE_AA, _SHIFT)
    return silhouette >= 0.5


def _occlude(rng: np.random.Generator, image: np.ndarray, box: tuple[float, ...]) -> None:
    """A foreground bar or blob over part of the head (the box still marks the whole head)."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1)
    centre = rng.uniform((x1, y1), (x2, y2))
    colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
    if rng.random() < 0.5:
        angle = rng.uniform(0, np.pi)
        # crosses the image
        direction = np.array([np.cos(angle), np.sin(angle)]) * 2 * image.shape[0]
        thickness = max(1, int(side * rng.uniform(0.12, 0.25)))
        cv2.line(
            image,
            _px(centre - direction),
            _px(centre + direction),
            colour,
            thickness,
            cv2.LINE_AA,
            _SHIFT,
        )
    else:
        axes = _px(side * rng.uniform(0.12, 0.3, 2))
        cv2.ellipse(
            image, _px(centre), axes, rng.uniform(0, 180), 0, 360, colour, -1, cv2.LINE_AA, _SHIFT
        )


def _head_box(head: Head, to_px, size: int) -> Box:
    """Exact extent of the head's shapes (ears included), clipped to the image.

    cv2 draws at pixel centres; boxes count pixel i as [i, i + 1), hence the half pixel.
    """
    points = np.concatenate([to_px(polygon) for polygon, _, _ in head.parts]) + 0.5
    (x1, y1), (x2, y2) = np.clip(points.min(0), 0, size), np.clip(points.max(0), 0, size)
    return float(x1), float(y1), float(x2), float(y2)


def render(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, int, Box]:
    """One synthetic pet: RGB uint8 image (size x size), label (0 = cat, 1 = dog), head box in pixels."""
    if size < MIN_SIZE:
        raise ValueError(f"size is {size}, expected at least {MIN_SIZE} px (smaller heads vanish)")
    label = int(rng.random() < DOG_SHARE)
    head = _dog_head(rng) if label else _cat_head(rng)
    to_px, scale = _place_head(rng, head, size)
    fur = _fur_texture(rng, size, scale)
    image = _background(rng, size)
    image = _draw_body(rng, image, fur, to_px, scale, is_cat=not label)
    silhouette = _draw_head(image, fur * rng.uniform(0.95, 1.1), head, to_px, scale)
    if rng.random() < 0.5:  # cartoon outline, drawn inside the silhouette so the box is unchanged
        edge = silhouette & ~cv2.erode(
            silhouette.astype(np.uint8), np.ones((3, 3), np.uint8)
        ).astype(bool)
        image[edge] *= 0.4
    box = _head_box(head, to_px, size)
    if rng.random() < OCCLUSION_PROB:
        _occlude(rng, image, box)
    image += rng.uniform(2, 8) * rng.standard_normal(image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), label, box


SYNTH_BATCH = 64


def generate(out: Path, count: int = 1500, seed: int = 0, size: int = 128) -> Path:
    """Writes `count` images as `out/synth_<class>_<index>.jpg` + `.txt` (cats_dogs layout).

    Files of an earlier run in `out` (`synth_*.jpg|txt`) are removed first, so the folder
    holds exactly this set; other files are left alone.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("synth_*.jpg"), *out.glob("synth_*.txt")]:
        old.unlink()

    # each image has its own random stream, so any order gives the same set
    def write(index: int) -> None:
        image, label, box = render(np.random.default_rng([seed, index]), size)
        species = SPECIES.names[label]
        name = f"synth_{species}_{index:05d}"
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(str(out / f"{name}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise OSError(f"{out / name}.jpg: could not write the image")
        (out / f"{name}.txt").write_text(annotation_line(species, box))

    # NumPy and OpenCV release the GIL for most of an image's work, so threads pay. Images go
    # to the pool a batch at a time, so a stop cancels what is not yet started.
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        try:
            for start in range(0, count, SYNTH_BATCH):
                list(pool.map(write, range(start, min(count, start + SYNTH_BATCH))))
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    # Written last: its presence says the set is complete, its content which set it is.
    (out / SETTINGS_FILE).write_text(json.dumps(settings(count, seed, size)))
    return out


SETTINGS_FILE = ".synth.json"


def settings(count: int, seed: int, size: int) -> dict:
    return {"count": count, "seed": seed, "size": size}


def is_generated(out: Path, count: int, seed: int, size: int = 128) -> bool:
    """True when `out` holds a complete set made with these settings."""
    try:
        return json.loads(read_bounded(Path(out) / SETTINGS_FILE, SMALL_FILE_LIMIT)) == settings(
            count, seed, size
        )
    except (UnreadableFile, OSError, ValueError):  # then it is made afresh
        return False
