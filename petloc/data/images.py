"""Image files to upright RGB arrays; a damaged file raises `BadImage` with a short reason.

Decoding is by content (a PNG named `.jpg` loads), upright as a viewer shows the photo (the
EXIF orientation applied, so boxes are in that frame), and only after the header has shown
that the image is within the pixel limit (PETLOC_MAX_IMAGE_PIXELS): half a megabyte of PNG
can decode to gigabytes. Before that, a file is read only when it is a regular file of at
most PETLOC_MAX_IMAGE_BYTES (every command, as the server's requests): a FIFO named x.jpg
would block the read forever, /dev/zero never ends.

JPEGs get two extra checks, because libjpeg decodes damaged files into garbage-filled
pixels and only prints a warning:
- structure: the marker stream must reach the end-of-image marker (FFD9): a cut file
  has none (bytes after it are allowed: phones append trailers there);
- libjpeg's own verdict: its "Corrupt JPEG data" / "Premature end" warnings are read
  from the decoder's stderr (fd 2 is redirected for the duration of one decode) and kept
  off the terminal. Extraneous bytes before a marker leave a complete image (the decoder
  skips bytes that belong to no segment): a lenient read (prediction, evaluation, serving)
  returns them as warnings, a strict one (training data, by default) refuses the file.
  Every other warning (premature end, bad Huffman code) means damaged pixels: refused by
  both. Corruption after which the Huffman stream happens to resynchronise leaves a
  valid stream: no decoder can see it.
"""

from __future__ import annotations

import io
import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from petloc.errors import PetlocError
from petloc.files import UnreadableFile, read_bounded

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # the photo files a dataset folder may hold

SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF8": "GIF",
    b"BM": "BMP",
    b"RIFF": "WebP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
MAX_BYTES_SETTING = "PETLOC_MAX_IMAGE_BYTES"
DEFAULT_MAX_BYTES = 20_000_000  # a 50 MP phone JPEG is 10-20 MB
MAX_PIXELS_SETTING = "PETLOC_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 50_000_000  # above any phone's default photo; 150 MB once decoded
MAX_ROWS_SETTING, DEFAULT_MAX_ROWS = "PETLOC_MAX_ROWS", 64  # images per request to the server
# libjpeg warnings that mean the pixels may not be what was encoded.
DAMAGE_WARNINGS = ("Corrupt JPEG data", "Premature end of JPEG file")
# ... of which this one leaves the image complete: the skipped bytes belong to no segment.
RECOVERABLE_WARNING = re.compile(
    r"Corrupt JPEG data: (\d+ extraneous bytes before marker 0x[0-9a-f]+)"
)
ORIENTATION_TAG = 274  # EXIF
# EXIF orientation -> how to turn the stored pixels upright (what Pillow's exif_transpose does).
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],  # mirrored
    3: lambda a: a[::-1, ::-1],  # upside down
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: a.swapaxes(0, 1)[:, ::-1],  # rotate 90 degrees clockwise: a phone held upright
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: a.swapaxes(0, 1)[::-1],  # rotate 90 degrees anticlockwise
}
_JPEG_REDUCTIONS = (
    (8, cv2.IMREAD_REDUCED_COLOR_8),
    (4, cv2.IMREAD_REDUCED_COLOR_4),
    (2, cv2.IMREAD_REDUCED_COLOR_2),
)
# A marker: FF then a code that is not stuffing (00), fill (FF) or a restart (D0-D7).
_MARKER = re.compile(rb"\xff[^\x00\xff\xd0-\xd7]")
_STANDALONE_MARKERS = {0x01, 0xD8}
_END_OF_IMAGE = 0xD9
_STDERR_LOCK = threading.Lock()

SizeOf = Callable[[Path], tuple[int, int]]  # image file -> (width, height); raises BadImage


class BadImage(Exception):
    """An image file that cannot be used; the message is the reason (one short line)."""


@dataclass(frozen=True)
class Decoded:
    """An image read leniently: upright RGB pixels (shrunk when asked), the full upright
    size, and the decoder's warnings about an image that still decoded completely."""

    pixels: np.ndarray
    width: int
    height: int
    warnings: tuple[str, ...] = ()


def read_rgb(path: str | Path, *, strict: bool = True) -> np.ndarray:
    """The image at `path`, upright, as H x W x 3 uint8 RGB. Strict (training data): a
    recoverable decoder warning is a `BadImage` too; lenient: only damage is."""
    return _decode(_read_bytes(path), strict=strict).pixels


def read_image(path: str | Path, *, max_side: int | None = None) -> Decoded:
    """The image at `path`, read leniently (see `Decoded`); raises `BadImage`."""
    return _decode(_read_bytes(path), strict=False, max_side=max_side)


def decode_rgb(data: bytes, *, strict: bool = True) -> np.ndarray:
    """Encoded image bytes to upright H x W x 3 uint8 RGB; raises `BadImage`."""
    return _decode(data, strict=strict).pixels


def decode_image(data: bytes, *, max_side: int | None = None) -> Decoded:
    """Encoded image bytes, read leniently; with `max_side`, the pixels are shrunk to fit
    max_side x max_side right after decoding (JPEGs are decoded at 1/2, 1/4 or 1/8 scale
    when that is still large enough), while width and height stay the original's."""
    return _decode(data, strict=False, max_side=max_side)


def header_size(path: str | Path) -> tuple[int, int]:
    """Upright (width, height) from the file's header alone, without decoding the pixels."""
    data = _read_bytes(path)
    width, height, orientation = _header(io.BytesIO(data), kind=image_kind(data))
    check_pixel_limit(width, height)
    return _upright_size(width, height, orientation)


def max_image_pixels() -> int:
    """The pixel limit (width x height) of an image petloc decodes, read from the
    environment each time so a served model follows its setting."""
    return positive_setting(MAX_PIXELS_SETTING, DEFAULT_MAX_PIXELS)


def max_image_bytes() -> int:
    """The size limit of an encoded image petloc reads (a file, or a row sent to the server),
    read from the environment each time so a served model follows its setting."""
    return positive_setting(MAX_BYTES_SETTING, DEFAULT_MAX_BYTES)


# The largest value a size or count setting takes: a limit of many digits is no limit, and
# past this a read's buffer size overflows.
MOST_SETTING = 2**31 - 1


def positive_setting(name: str, default: int) -> int:
    """A whole number from 1 to MOST_SETTING from environment variable `name`, else `default`."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MOST_SETTING:
        raise PetlocError(
            f"{name}={text[:40]}: expected a whole number above 0, at most {MOST_SETTING}"
        )
    return value


def check_pixel_limit(width: int, height: int) -> None:
    limit = max_image_pixels()
    if width * height > limit:
        raise BadImage(
            f"image is {width}x{height} pixels, over the limit of {limit} pixels ({MAX_PIXELS_SETTING})"
        )


def _read_bytes(path: str | Path) -> bytes:
    try:
        # Python I/O: any file name works
        return read_bounded(path, max_image_bytes(), MAX_BYTES_SETTING)
    except UnreadableFile as err:
        raise BadImage(err.reason) from None
    except OSError as err:
        raise BadImage(f"cannot read file: {err.strerror or err}") from None


def _decode(data: bytes, *, strict: bool, max_side: int | None = None) -> Decoded:
    if not data:
        raise BadImage("empty file")
    kind = image_kind(data)
    if kind == "JPEG":
        check_jpeg_structure(data)
    width, height, orientation = _header(io.BytesIO(data), kind)
    check_pixel_limit(width, height)  # before decoding: the header is cheap, the pixels are not
    pixels, messages = _decode_quietly(data, _decode_flags(kind, width, height, max_side))
    recoverable = [m for m in messages if RECOVERABLE_WARNING.match(m)]
    damage = [m for m in messages if not RECOVERABLE_WARNING.match(m)]
    if damage or (strict and recoverable):
        raise BadImage(_damage_reason((damage or recoverable)[0]))
    if pixels is None:
        raise BadImage(
            f"damaged {kind} file: cannot decode it"
            if kind
            else "not an image (unknown file format)"
        )
    rgb = upright(to_rgb(_shrunk(pixels, max_side)), orientation)
    return Decoded(
        rgb,
        *_upright_size(width, height, orientation),
        tuple(_warning_text(m) for m in recoverable),
    )


def _header(source: str | Path | io.BytesIO, kind: str | None) -> tuple[int, int, int]:
    """(width, height, EXIF orientation) as stored, read by Pillow without decoding pixels."""
    with warnings.catch_warnings():
        # petloc's own limit applies
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(source) as image:
                return image.size[0], image.size[1], _orientation(image)
        except UnidentifiedImageError:
            raise BadImage(
                f"damaged {kind} file: cannot read its header"
                if kind
                else "not an image (unknown file format)"
            ) from None
        # over Pillow's own limit (179 MP), which hides the size
        except Image.DecompressionBombError as err:
            raise BadImage(_bomb_reason(str(err))) from None
        except OSError as err:
            raise BadImage(f"cannot read file: {err.strerror or err}") from None


def _bomb_reason(pillow_message: str) -> str:
    """Pillow's "Image size (400000000 pixels) exceeds limit of 178956970 pixels, ..." -> a reason."""
    counts = [int(n) for n in re.findall(r"\d+", pillow_message)]
    if len(counts) < 2:
        return f"image is too large ({pillow_message})"
    pixels, pillow_limit = counts[:2]
    limit = max_image_pixels()
    if limit < pillow_limit:
        return f"image is {pixels} pixels, over the limit of {limit} pixels ({MAX_PIXELS_SETTING})"
    return f"image is {pixels} pixels, over Pillow's limit of {pillow_limit} pixels"


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 = upright as stored, up to 8)."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1  # Pillow would decode the whole PNG to look for a late eXIf chunk
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001  (a malformed EXIF block, many error types: show the pixels as stored)
        return 1
    return value if value in _UPRIGHT else 1


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """The stored pixels turned as the EXIF orientation says a viewer shows them."""
    turn = _UPRIGHT.get(orientation)
    return np.ascontiguousarray(turn(pixels)) if turn else pixels


def _upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _decode_flags(kind: str | None, width: int, height: int, max_side: int | None) -> int:
    """libjpeg can decode at 1/2, 1/4 or 1/8 scale, never holding the full-size pixels."""
    if kind == "JPEG" and max_side:
        for factor, flag in _JPEG_REDUCTIONS:
            if max(width, height) // factor >= max_side:
                return flag | cv2.IMREAD_IGNORE_ORIENTATION  # orientation is applied by `upright`
    return cv2.IMREAD_UNCHANGED  # all channels, any depth, no EXIF rotation


def _shrunk(pixels: np.ndarray, max_side: int | None) -> np.ndarray:
    h, w = pixels.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return pixels
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def image_kind(data: bytes) -> str | None:
    """The format named by the file's first bytes ("JPEG", "PNG", ...), or None."""
    return next((kind for magic, kind in SIGNATURES.items() if data.startswith(magic)), None)


def check_jpeg_structure(data: bytes) -> None:
    """Raise `BadImage` unless the JPEG's marker stream reaches its FFD9 end marker.

    Bytes after the end marker are allowed: cameras and phones append trailers there
    (motion photos, maker data), and the image itself is complete."""
    if _end_of_image(data) is None:
        raise BadImage("truncated JPEG: no end-of-image marker (FFD9)")


def _end_of_image(data: bytes) -> int | None:
    """Offset just past the FFD9 marker, or None when the stream stops before it.

    Segments are skipped by their length (an EXIF thumbnail holds its own FFD9); the
    entropy-coded data after SOS contains no marker, so the regex skips over it.
    """
    pos = 2  # after SOI
    while (marker := _MARKER.search(data, pos)) is not None:
        code = data[marker.end() - 1]
        if code == _END_OF_IMAGE:
            return marker.end()
        if code in _STANDALONE_MARKERS:
            pos = marker.end()
            continue
        length = int.from_bytes(data[marker.end() : marker.end() + 2], "big")
        if length < 2:
            return None
        pos = marker.end() + length
    return None


def _decode_quietly(
    data: bytes, flags: int = cv2.IMREAD_UNCHANGED
) -> tuple[np.ndarray | None, list[str]]:
    """cv2 decode and the libjpeg damage warnings it printed.

    After a successful decode, other captured lines (maybe another thread's) are written
    back to stderr; after a failed one they only describe that failure, which `BadImage`
    reports instead.
    """
    with _stderr_lines() as lines:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    damage = [line for line in lines if line.startswith(DAMAGE_WARNINGS)]
    others = [line for line in lines if not line.startswith(DAMAGE_WARNINGS)]
    if others and pixels is not None and sys.stderr is not None:
        sys.stderr.write("\n".join(others) + "\n")
    return pixels, damage


def _damage_reason(warning: str) -> str:
    """libjpeg's "Corrupt JPEG data: premature end of data segment" -> a reason."""
    prefix = "Corrupt JPEG data: "
    if warning.startswith(prefix):
        return f"corrupt JPEG data ({warning[len(prefix) :]})"
    return f"damaged JPEG ({warning[0].lower()}{warning[1:]})"


def _warning_text(warning: str) -> str:
    """libjpeg's "Corrupt JPEG data: 240 extraneous bytes before marker 0xd9" -> a warning."""
    match = RECOVERABLE_WARNING.match(warning)
    skipped = match[1] if match else warning
    return f"the JPEG decoder skipped {skipped}; the image decoded in full"


@contextmanager
def _stderr_lines():
    """Collect what C code writes to file descriptor 2 inside the block, one thread at a time."""
    lines: list[str] = []
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to capture
            yield lines
            return
        with tempfile.TemporaryFile() as sink:
            if sys.stderr is not None:
                sys.stderr.flush()
            os.dup2(sink.fileno(), 2)
            try:
                yield lines
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                lines.extend(sink.read().decode("utf-8", "replace").splitlines())


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """cv2's decoded array (gray / BGR / BGRA, 8 or 16 bit) to H x W x 3 uint8 RGB."""
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise BadImage(f"unsupported pixel type {pixels.dtype}")
    if pixels.ndim == 2 or pixels.shape[2] == 1:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    if pixels.shape[2] == 4:
        return _over_white(pixels)
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def _over_white(bgra: np.ndarray) -> np.ndarray:
    """Composite on white: transparent areas look as in most viewers, not as hidden colours."""
    alpha = bgra[..., 3:4].astype(np.float32) / 255.0
    rgb = bgra[..., 2::-1].astype(np.float32)
    return np.rint(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
