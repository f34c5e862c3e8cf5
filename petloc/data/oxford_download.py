"""`petloc data oxford`: fetch the Oxford-IIIT Pet archives, unpack them, convert the head boxes.

Steps, each skipped when its result is already there, so a second run is cheap:
download (`out/downloads/`, via a `.part` file that is resumed and renamed only when whole),
verify (the MD5 published for each archive; a mismatching file is kept aside as
`NAME.bad-md5`, never extracted), check (a readable gzip tar with the expected members; a bad
one is removed), extract (member by member into a staging folder, regular files and folders
under the archive's own top folder only, then moved: `out/images/` exists only when complete),
convert (a stratified train/valid split in the cats_dogs layout under `out/cats_dogs/`).

Nothing lost: everything this module deletes lies inside `out` (see `petloc.files.remove_tree`), and
it replaces `out/cats_dogs/` only when it made that folder itself; a folder it did not make is
refused, or with `replace_foreign` moved aside, never deleted.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from petloc.data.classes import SPECIES
from petloc.data.readers import scan
from petloc.data.records import Sample, Skipped, annotation_line
from petloc.errors import PetlocError
from petloc.files import SMALL_FILE_LIMIT, UnreadableFile, inside, read_bounded, remove_tree

OFFICIAL_BASE = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/"
# archive -> (the folder it unpacks to, member patterns it must hold)
ARCHIVES = {
    "images.tar.gz": ("images", ("images/*.jpg",)),
    "annotations.tar.gz": ("annotations", ("annotations/xmls/*.xml", "annotations/trainval.txt")),
}
# The digests torchvision's OxfordIIITPet loader checks (torchvision/datasets/oxford_iiit_pet.py).
OFFICIAL_MD5 = {
    "images.tar.gz": "5c4f3ee8e5d25df40f4fd59a7f44e54c",
    "annotations.tar.gz": "95a8c909bbe2e81eed6a22bccdf3f68f",
}
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60
SETTINGS_FILE = ".oxford-split.json"  # in cats_dogs/: the split it was made with, and the mark that petloc made it
OFFLINE_HINT = "check the network or pass --url to a mirror or a local folder (file://...)"
MEMBER_KINDS = {
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "fifo",
}


def download_oxford(
    out: Path = Path("data/oxford-iiit-pet"),
    base_url: str = OFFICIAL_BASE,
    val_share: float = 0.15,
    seed: int = 0,
    say=print,
    force: bool = False,
    digests: dict[str, str] | None = None,
    replace_foreign: bool = False,
) -> Path:
    """Download, verify and extract the dataset into `out`, convert it; returns `out / "cats_dogs"`.

    `force` redoes the conversion only; delete `out/downloads/` or `out/images/` to redo the rest.
    `digests` (archive name -> MD5) replaces the official digests, for a mirror whose files differ.
    `replace_foreign` lets it replace an `out/cats_dogs/` it did not make, which is moved aside.
    """
    if not 0 < val_share < 1:
        raise PetlocError(f"val_share is {val_share}, expected a share between 0 and 1")
    out = Path(out)
    digests = {**OFFICIAL_MD5, **(digests or {})}
    # refuse before a long download, not after
    if is_foreign(out / "cats_dogs") and not replace_foreign:
        raise PetlocError(foreign_refusal(out / "cats_dogs"))
    for name, (top, patterns) in ARCHIVES.items():
        if (out / top).is_dir():
            say(f"{out / top} already extracted: {name} not needed")
            continue
        archive = out / "downloads" / name
        fetch(base_url.rstrip("/") + "/" + name, archive, out, say)
        verify_md5(archive, digests[name], out)
        check_archive(archive, patterns, out)
        extract(archive, out, top, say)
    return convert(out, val_share, seed, say, force, replace_foreign)


def parse_digests(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`["images.tar.gz=<md5>", ...]` (the CLI's --md5) as {archive name: md5}."""
    digests = {}
    for pair in pairs:
        name, _, md5 = pair.partition("=")
        if (
            name not in ARCHIVES
            or len(md5) != 32
            or any(c not in "0123456789abcdefABCDEF" for c in md5)
        ):
            raise PetlocError(
                f"--md5 {pair}: expected NAME=MD5 with NAME one of {', '.join(ARCHIVES)} and 32 hex digits"
            )
        digests[name] = md5.lower()
    return digests


def fetch(url: str, dest: Path, out: Path, say=print) -> None:
    """Download `url` to `dest` through `dest.part`; a present `dest` is complete by construction."""
    if dest.is_file():
        say(f"{dest} already downloaded")
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    # never write through a link leading out
    part = inside(dest.with_name(dest.name + ".part"), out)
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            # 206: the server continues the .part; anything else (file://, no Range support) starts over.
            start = have if getattr(response, "status", None) == 206 else 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length else None
            with (
                open(part, "ab" if start else "wb") as file,
                tqdm(
                    total=total,
                    initial=start,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                ) as bar,
            ):
                while chunk := response.read(CHUNK_BYTES):
                    file.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        # the .part is not a prefix the server can continue: start over
        if err.code == 416 and have:
            remove_tree(part, out)
            return fetch(url, dest, out, say)
        raise PetlocError(
            f"cannot download {url}: HTTP {err.code} {err.reason}; {OFFLINE_HINT}"
        ) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        raise PetlocError(f"cannot download {url}: {_reason(err)}; {OFFLINE_HINT}") from None
    # http.client returns b"" when a connection drops early, so the length is checked here.
    size = part.stat().st_size
    if total is not None and size != total:
        raise PetlocError(
            f"cannot download {url}: the connection ended after {size} of {total} bytes; run again to resume"
        )
    part.rename(dest)


def verify_md5(archive: Path, expected: str, out: Path) -> None:
    """Refuse an archive whose MD5 is not `expected`, keeping it aside as `NAME.bad-md5` to look at."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(archive, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual == expected.lower():
        return
    aside = archive.with_name(archive.name + ".bad-md5")
    remove_tree(aside, out)  # an older rejected copy
    archive.rename(aside)
    raise PetlocError(
        f"{archive}: MD5 {actual} is not the expected {expected}; kept it as {aside.name}, not extracted "
        f"(if your mirror's {archive.name} is meant to differ, pass --md5 {archive.name}={actual})"
    )


def check_archive(path: Path, patterns: tuple[str, ...], out: Path) -> None:
    """Refuse an archive that is not a whole gzip tar with the expected members, removing it."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            names = tar.getnames()  # reads to the end, so a truncated file fails here
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        _reject(path, out, f"not a readable .tar.gz ({_reason(err)})")
    missing = [p for p in patterns if not any(fnmatch(n, p) for n in names)]
    if missing:
        _reject(path, out, f"no member matching {', '.join(missing)}")


class UnsafeMember(Exception):
    """A member extraction refuses: the message names it and says why."""


def extract(archive: Path, out: Path, top: str, say=print) -> None:
    """Unpack into a staging folder, then move `top` into `out`, so `out/top` means complete.

    Member by member under our own rules, not tarfile's filters: before the patched Pythons,
    filter="data" lets a symlink chain longer than PATH_MAX lead outside (CVE-2025-4517), and
    the dataset needs nothing but regular files and folders anyway.
    """
    staging = archive.with_name(archive.name + ".extracting")
    remove_tree(staging, out)
    staging.mkdir()
    say(f"extracting {archive}")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                extract_member(tar, member, staging, top)
    except UnsafeMember as err:
        remove_tree(staging, out)
        _reject(archive, out, f"refused member {err}")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        remove_tree(staging, out)
        raise PetlocError(f"cannot extract {archive}: {_reason(err)}") from None
    (staging / top).rename(out / top)
    remove_tree(staging, out)


def extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, staging: Path, top: str) -> None:
    """Write one regular file or folder of `tar` into `staging`, after `member_destination` allowed it."""
    destination = member_destination(member, staging, top)
    if member.isdir():
        destination.mkdir(parents=True, exist_ok=True)
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    if source is None:  # member_destination lets only folders and regular files through
        raise PetlocError(f"{member.name}: not a regular file")
    with source, open(destination, "wb") as target:
        shutil.copyfileobj(source, target, CHUNK_BYTES)


def member_destination(member: tarfile.TarInfo, staging: Path, top: str) -> Path:
    """Where `member` goes in `staging`; UnsafeMember unless it is a plain file or folder under `top/`."""
    reason = unsafe_reason(member, top)
    destination = staging.joinpath(*PurePosixPath(member.name).parts)
    # Nothing in staging is a link, so this holds by construction; checked anyway, it is cheap.
    if reason is None and staging.resolve() not in destination.resolve().parents:
        reason = "it resolves outside the staging folder"
    if reason is not None:
        raise UnsafeMember(f"{member.name!r}: {reason}")  # repr: a crafted name stays on one line
    return destination


def unsafe_reason(member: tarfile.TarInfo, top: str) -> str | None:
    parts = PurePosixPath(member.name).parts
    if member.name.startswith("/"):
        return "an absolute path"
    if ".." in parts:
        return "a '..' in its path"
    if parts[:1] != (top,):
        return f"not under {top}/"
    if not (member.isreg() or member.isdir()):
        return f"a {MEMBER_KINDS.get(member.type, 'special member')}, only regular files and folders are accepted"
    return None


def convert(
    out: Path,
    val_share: float,
    seed: int,
    say=print,
    force: bool = False,
    replace_foreign: bool = False,
) -> Path:
    """The usable Oxford samples as `out/cats_dogs/{train,valid}/NAME.jpg + NAME.txt`."""
    dest = out / "cats_dogs"
    settings = {"val_share": val_share, "seed": seed}
    foreign = is_foreign(dest)
    if foreign and not replace_foreign:
        raise PetlocError(foreign_refusal(dest))
    if dest.is_dir() and not foreign and not force:
        if _read_settings(dest) == settings:
            say(
                f"{dest} already converted with val_share={val_share}, seed={seed}: "
                "nothing to do (force=True redoes it)"
            )
            return dest
        say(f"{dest} was made with other settings: converting again")
    samples, skipped = _usable(out)
    say(f"{len(samples)} images with a head box; {len(skipped)} skipped")
    for item in skipped:
        say(f"  skipped {item}")
    splits = dict(zip(("train", "valid"), _split(samples, val_share, seed), strict=True))
    # renamed when complete: an interrupted run leaves no half dataset
    staging = out / "cats_dogs.part"
    remove_tree(staging, out)
    for split, chosen in splits.items():
        folder = staging / split
        folder.mkdir(parents=True)
        for sample in chosen:
            shutil.copyfile(sample.path, folder / sample.path.name)
            (folder / f"{sample.path.stem}.txt").write_text(
                annotation_line(sample.label, sample.box)
            )
    (staging / SETTINGS_FILE).write_text(json.dumps(settings))
    if foreign:
        say(f"{dest} was not made by petloc: moved it aside to {move_aside(dest)}")
    else:
        remove_tree(dest, out)
    staging.rename(dest)
    for split, chosen in splits.items():
        counts = Counter(s.label for s in chosen)
        say(
            f"{dest / split}: {len(chosen)} images ({', '.join(f'{n} {counts[n]}' for n in SPECIES.names)})"
        )
    return dest


def is_foreign(dest: Path) -> bool:
    """`dest` exists but petloc did not make it: it is a link, a file, or a folder without our settings file."""
    if not os.path.lexists(dest):
        return False
    return dest.is_symlink() or not (dest / SETTINGS_FILE).is_file()


def foreign_refusal(dest: Path) -> str:
    return (
        f"{dest} exists and petloc did not make it (no {SETTINGS_FILE} in it): refusing to replace it; "
        f"move it away, choose another --out, or pass --replace-foreign to move it aside to {dest.name}.old-<time>"
    )


def move_aside(path: Path) -> Path:
    """Rename `path` to `NAME.old-<time>` beside it (never over anything) and return the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = path.with_name(f"{path.name}.old-{stamp}"), 1
    while os.path.lexists(aside):
        n += 1
        aside = path.with_name(f"{path.name}.old-{stamp}-{n}")
    path.rename(aside)
    return aside


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
        return tuple(
            train_test_split(
                samples, test_size=val_share, stratify=[s.label for s in samples], random_state=seed
            )
        )
    except ValueError as err:
        raise PetlocError(
            f"cannot split {len(samples)} usable images by species with val_share={val_share}: {err}"
        ) from None


def _read_settings(dest: Path) -> dict | None:
    try:
        return json.loads(read_bounded(dest / SETTINGS_FILE, SMALL_FILE_LIMIT))
    except (UnreadableFile, OSError, ValueError):
        return None


def _reject(path: Path, out: Path, reason: str):
    remove_tree(path, out)  # so the next run downloads it again
    raise PetlocError(f"{path}: {reason}; removed it, run again to download it afresh")


def _reason(err: BaseException) -> str:
    """One line for users: URLError wraps the OSError whose strerror is the readable part."""
    reason = getattr(err, "reason", err)
    return getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
