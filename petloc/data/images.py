"""Image files to RGB arrays; a damaged file raises `BadImage` with a short reason.

Decoding is by content (a PNG named `.jpg` loads). JPEGs get two extra checks, because
libjpeg decodes damaged files into garbage-filled pixels and only prints a warning:
- structure: the marker stream must reach the end-of-image marker (FFD9): a cut file
  has none (bytes after it are allowed: phones append trailers there);
- libjpeg's own verdict: its "Corrupt JPEG data" / "Premature end" warnings are read
  from the decoder's stderr (fd 2 is redirected for the duration of one decode), turned
  into the reason, and kept off the terminal. Corruption after which the Huffman stream
  happens to resynchronise leaves a valid stream: no decoder can see it.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF8": "GIF",
    b"BM": "BMP",
    b"RIFF": "WebP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
# libjpeg warnings that mean the pixels are not what was encoded.
DAMAGE_WARNINGS = ("Corrupt JPEG data", "Premature end of JPEG file")
# A marker: FF then a code that is not stuffing (00), fill (FF) or a restart (D0-D7).
_MARKER = re.compile(rb"\xff[^\x00\xff\xd0-\xd7]")
_STANDALONE_MARKERS = {0x01, 0xD8}
_END_OF_IMAGE = 0xD9
_STDERR_LOCK = threading.Lock()

SizeOf = Callable[[Path], tuple[int, int]]  # image file -> (width, height); raises BadImage


class BadImage(Exception):
    """An image file that cannot be used; the message is the reason (one short line)."""


def read_rgb(path: str | Path) -> np.ndarray:
    """The image at `path` as an H x W x 3 uint8 RGB array (EXIF orientation not applied)."""
    try:
        data = Path(path).read_bytes()  # Python I/O: any file name works
    except OSError as err:
        raise BadImage(f"cannot read file: {err.strerror or err}") from None
    return decode_rgb(data)


def header_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file's header alone, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError  # pillow comes with matplotlib

    try:
        with Image.open(path) as image:
            return image.size
    except UnidentifiedImageError:
        raise BadImage("not an image (unknown file format)") from None
    except OSError as err:
        raise BadImage(f"cannot read file: {err.strerror or err}") from None


def decode_rgb(data: bytes) -> np.ndarray:
    """Encoded image bytes to H x W x 3 uint8 RGB; raises `BadImage`."""
    if not data:
        raise BadImage("empty file")
    kind = image_kind(data)
    if kind == "JPEG":
        check_jpeg_structure(data)
    pixels, damage = _decode_quietly(data)
    if damage:
        raise BadImage(_damage_reason(damage[0]))
    if pixels is None:
        raise BadImage(f"damaged {kind} file: cannot decode it" if kind else "not an image (unknown file format)")
    return to_rgb(pixels)


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


def _decode_quietly(data: bytes) -> tuple[np.ndarray | None, list[str]]:
    """cv2 decode (all channels, any depth) and the libjpeg damage warnings it printed.

    After a successful decode, other captured lines (maybe another thread's) are written
    back to stderr; after a failed one they only describe that failure, which `BadImage`
    reports instead.
    """
    with _stderr_lines() as lines:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # no EXIF rotation
    damage = [line for line in lines if line.startswith(DAMAGE_WARNINGS)]
    others = [line for line in lines if not line.startswith(DAMAGE_WARNINGS)]
    if others and pixels is not None and sys.stderr is not None:
        sys.stderr.write("\n".join(others) + "\n")
    return pixels, damage


def _damage_reason(warning: str) -> str:
    """libjpeg's "Corrupt JPEG data: premature end of data segment" -> a reason."""
    prefix = "Corrupt JPEG data: "
    if warning.startswith(prefix):
        return f"corrupt JPEG data ({warning[len(prefix):]})"
    return f"damaged JPEG ({warning[0].lower()}{warning[1:]})"


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
