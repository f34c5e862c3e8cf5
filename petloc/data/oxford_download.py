"""`petloc data oxford`: fetch the Oxford-IIIT Pet archives, unpack them, convert the head boxes.

Steps, each skipped when its result is already there, so a second run is cheap:
download (`out/downloads/`, via a `.part` file that is resumed and renamed only when whole),
check (a readable gzip tar with the expected members; a bad one is removed), extract
(into a staging folder, then moved: `out/images/` exists only when complete), convert
(a stratified train/valid split in the cats_dogs layout under `out/cats_dogs/`).
"""

from __future__ import annotations

import http.client
import json
import shutil
import tarfile
import urllib.error
import urllib.request
import zlib
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

from tqdm import tqdm

from petloc.data.readers import scan
from petloc.data.records import CLASS_NAMES, Sample, Skipped, annotation_line
from petloc.errors import PetlocError

OFFICIAL_BASE = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/"
# archive -> (the folder it unpacks to, member patterns it must hold)
ARCHIVES = {
    "images.tar.gz": ("images", ("images/*.jpg",)),
    "annotations.tar.gz": ("annotations", ("annotations/xmls/*.xml", "annotations/trainval.txt")),
}
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60
SETTINGS_FILE = ".oxford-split.json"  # in cats_dogs/: the split it was made with
OFFLINE_HINT = "check the network or pass --url to a mirror or a local folder (file://...)"


def download_oxford(
    out: Path = Path("data/oxford-iiit-pet"),
    base_url: str = OFFICIAL_BASE,
    val_share: float = 0.15,
    seed: int = 0,
    log=print,
    force: bool = False,
) -> Path:
    """Download, check and extract the dataset into `out`, convert it; returns `out / "cats_dogs"`.

    `force` redoes the conversion only; delete `out/downloads/` or `out/images/` to redo the rest.
    """
    if not 0 < val_share < 1:
        raise PetlocError(f"val_share is {val_share}, expected a share between 0 and 1")
    out = Path(out)
    for name, (top, patterns) in ARCHIVES.items():
        if (out / top).is_dir():
            log(f"{out / top} already extracted: {name} not needed")
            continue
        archive = out / "downloads" / name
        fetch(base_url.rstrip("/") + "/" + name, archive, log)
        check_archive(archive, patterns)
        extract(archive, out, top, log)
    return convert(out, val_share, seed, log, force)


def fetch(url: str, dest: Path, log=print) -> None:
    """Download `url` to `dest` through `dest.part`; a present `dest` is complete by construction."""
    if dest.is_file():
        log(f"{dest} already downloaded")
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            # 206: the server continues the .part; anything else (file://, no Range support) starts over.
            start = have if getattr(response, "status", None) == 206 else 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length else None
            with open(part, "ab" if start else "wb") as file, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name
            ) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    file.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the .part is not a prefix the server can continue: start over
            part.unlink()
            return fetch(url, dest, log)
        raise PetlocError(f"cannot download {url}: HTTP {err.code} {err.reason}; {OFFLINE_HINT}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        raise PetlocError(f"cannot download {url}: {_reason(err)}; {OFFLINE_HINT}") from None
    # http.client returns b"" when a connection drops early, so the length is checked here.
    size = part.stat().st_size
    if total is not None and size != total:
        raise PetlocError(f"cannot download {url}: the connection ended after {size} of {total} bytes; run again to resume")
    part.rename(dest)


def check_archive(path: Path, patterns: tuple[str, ...]) -> None:
    """Refuse an archive that is not a whole gzip tar with the expected members, removing it."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            names = tar.getnames()  # reads to the end, so a truncated file fails here
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        _reject(path, f"not a readable .tar.gz ({_reason(err)})")
    missing = [p for p in patterns if not any(fnmatch(n, p) for n in names)]
    if missing:
        _reject(path, f"no member matching {', '.join(missing)}")


def extract(archive: Path, out: Path, top: str, log=print) -> None:
    """Unpack into a staging folder, then move `top` into `out`, so `out/top` means complete."""
    staging = archive.with_name(archive.name + ".extracting")
    shutil.rmtree(staging, ignore_errors=True)
    log(f"extracting {archive}")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            # "data" refuses absolute paths, "..", links leading outside and device files.
            tar.extractall(staging, filter="data")
    except tarfile.FilterError as err:
        shutil.rmtree(staging, ignore_errors=True)
        _reject(archive, f"unsafe member ({err})")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise PetlocError(f"cannot extract {archive}: {_reason(err)}") from None
    (staging / top).rename(out / top)
    shutil.rmtree(staging)


def convert(out: Path, val_share: float, seed: int, log=print, force: bool = False) -> Path:
    """The usable Oxford samples as `out/cats_dogs/{train,valid}/NAME.jpg + NAME.txt`."""
    dest = out / "cats_dogs"
    settings = {"val_share": val_share, "seed": seed}
    if dest.is_dir() and not force:
        if _read_settings(dest) == settings:
            log(f"{dest} already converted with val_share={val_share}, seed={seed}: nothing to do (force=True redoes it)")
            return dest
        log(f"{dest} was made with other settings: converting again")
    samples, skipped = _usable(out)
    log(f"{len(samples)} images with a head box; {len(skipped)} skipped")
    for item in skipped:
        log(f"  skipped {item}")
    splits = dict(zip(("train", "valid"), _split(samples, val_share, seed)))
    staging = out / "cats_dogs.part"  # renamed when complete: an interrupted run leaves no half dataset
    shutil.rmtree(staging, ignore_errors=True)
    for split, chosen in splits.items():
        folder = staging / split
        folder.mkdir(parents=True)
        for sample in chosen:
            shutil.copyfile(sample.path, folder / sample.path.name)
            (folder / f"{sample.path.stem}.txt").write_text(annotation_line(sample.label, sample.box))
    (staging / SETTINGS_FILE).write_text(json.dumps(settings))
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    for split, chosen in splits.items():
        counts = Counter(CLASS_NAMES[s.label] for s in chosen)
        log(f"{dest / split}: {len(chosen)} images ({', '.join(f'{n} {counts[n]}' for n in CLASS_NAMES)})")
    return dest


def _usable(out: Path) -> tuple[list[Sample], list[Skipped]]:
    samples, skipped = [], []
    for item in scan(out):  # decodes each image, so damaged ones are skipped with a reason
        if isinstance(item, Skipped):
            skipped.append(item)
        else:
            samples.append(item[0])
    return samples, skipped


def _split(samples: list[Sample], val_share: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    from sklearn.model_selection import train_test_split  # slow import, only needed here

    if not samples:
        raise PetlocError("no usable image with a head box: nothing to convert")
    try:
        return tuple(train_test_split(samples, test_size=val_share, stratify=[s.label for s in samples], random_state=seed))
    except ValueError as err:
        raise PetlocError(f"cannot split {len(samples)} usable images by species with val_share={val_share}: {err}") from None


def _read_settings(dest: Path) -> dict | None:
    try:
        return json.loads((dest / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return None


def _reject(path: Path, reason: str):
    path.unlink(missing_ok=True)  # so the next run downloads it again
    raise PetlocError(f"{path}: {reason}; removed it, run again to download it afresh")


def _reason(err: BaseException) -> str:
    """One line for users: URLError wraps the OSError whose strerror is the readable part."""
    reason = getattr(err, "reason", err)
    return getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
