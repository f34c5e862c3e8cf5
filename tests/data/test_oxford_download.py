"""`download_oxford` against a tiny fake Oxford-IIIT Pet served from 127.0.0.1 or file://."""

import hashlib
import io
import os
import shutil
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from petloc.data import oxford_download
from petloc.data.oxford_download import download_oxford
from petloc.data.readers import scan
from petloc.data.records import Skipped
from petloc.errors import PetlocError
from tests.helpers import petloc_process

W, H = 48, 40
CATS = ["Abyssinian_1", "Bengal_2", "Birman_3", "Persian_4"]
DOGS = [
    "beagle_5",
    "boxer_6",
    "chihuahua_7",
    "pug_8",
    "pug_9",
    "samoyed_10",
    "shiba_inu_11",
    "havanese_12",
]
NO_XML = "Sphynx_13"  # like Oxford's test split: an image without a head box
DAMAGED = "boxer_14"  # xml fine, JPEG cut short
BAD_XML = "pug_15"
VAL_SHARE = 0.25  # 12 usable: valid 3 (1 cat, 2 dogs), train 9 (3 cats, 6 dogs)


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", pixels)[1].tobytes()


def voc_box(i: int) -> tuple[int, int, int, int]:
    return 2 + i, 3 + i, 30 + i, 25 + i  # VOC: 1-based, both ends included


def expected_line(name: str) -> str:
    i = index(name)
    xmin, ymin, xmax, ymax = voc_box(i)
    return f"{1 if name in CATS else 2} {xmin - 1} {ymin - 1} {xmax} {ymax}\n"


def index(name: str) -> int:
    return int(name.rsplit("_", 1)[1])


def voc_xml(species: str, i: int) -> str:
    xmin, ymin, xmax, ymax = voc_box(i)
    return (
        f"<annotation><size><width>{W}</width><height>{H}</height><depth>3</depth></size>"
        f"<object><name>{species}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object></annotation>"
    )


def make_oxford(root):
    images, xmls = root / "images", root / "annotations" / "xmls"
    xmls.mkdir(parents=True)
    images.mkdir()
    species = {
        **{n: "cat" for n in [*CATS, NO_XML]},
        **{n: "dog" for n in [*DOGS, DAMAGED, BAD_XML]},
    }
    for name, kind in species.items():
        (images / f"{name}.jpg").write_bytes(jpeg(index(name)))
        if name != NO_XML:
            (xmls / f"{name}.xml").write_text(voc_xml(kind, index(name)))
    (images / f"{DAMAGED}.jpg").write_bytes(jpeg(index(DAMAGED))[:300])
    (xmls / f"{BAD_XML}.xml").write_text("<annotation><size>")
    # NAME CLASS SPECIES BREED
    listed = {n: f"{n} 1 {1 if kind == 'cat' else 2} 1\n" for n, kind in species.items()}
    (root / "annotations" / "trainval.txt").write_text(
        "".join(v for n, v in listed.items() if n != NO_XML)
    )
    (root / "annotations" / "test.txt").write_text(listed[NO_XML])


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", data: bytes | None = None):
    """A crafted tar member: its header and, for a regular file, its content."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(data or b"")
    return info, data


def targz(folder, top: str, *extra) -> bytes:
    """`folder/top` as a .tar.gz, then the `extra` members (see `member`) in order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder / top, arcname=top)
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def md5s(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.md5(body).hexdigest() for name, body in files.items()}


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    source = tmp_path_factory.mktemp("oxford-source")
    make_oxford(source)
    return {
        "images.tar.gz": targz(source, "images"),
        "annotations.tar.gz": targz(source, "annotations"),
    }


@pytest.fixture(scope="module")
def digests(archives):
    """The test archives are not the official ones: their own MD5s stand in for the published digests."""
    return md5s(archives)


class Handler(BaseHTTPRequestHandler):
    """Serves `server.files`, honours `Range: bytes=N-` (416 past the end), sends only `server.cut` bytes when set."""

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"][len("bytes=") : -1]) if self.headers.get("Range") else 0
        if start >= len(body):
            self.send_error(416)
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        self.wfile.write(body[start : server.cut])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(archives):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.requests, httpd.cut = dict(archives), [], None
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def run(out, url, digests, **kwargs):
    lines = []
    result = download_oxford(
        out, base_url=url, val_share=VAL_SHARE, say=lines.append, digests=digests, **kwargs
    )
    return result, lines


def split_of(cats_dogs) -> dict[str, dict[str, str]]:
    """split -> {image name without suffix: its .txt line}."""
    return {
        split: {
            p.stem: p.with_suffix(".txt").read_text()
            for p in sorted((cats_dogs / split).glob("*.jpg"))
        }
        for split in ("train", "valid")
    }


def assert_converted(out, archives):
    cats_dogs = out / "cats_dogs"
    splits = split_of(cats_dogs)
    # no skipped, no xml-less image
    assert sorted([*splits["train"], *splits["valid"]]) == sorted(CATS + DOGS)
    for lines in splits.values():
        for name, line in lines.items():
            assert line == expected_line(name)
    # stratified by species: 1 cat + 2 dogs of 3 in valid, the rest in train
    assert sorted(n in CATS for n in splits["valid"]) == [False, False, True]
    # the copies are the original files, and every .txt has its image
    for split, lines in splits.items():
        for name in lines:
            assert (cats_dogs / split / f"{name}.jpg").read_bytes() == (
                out / "images" / f"{name}.jpg"
            ).read_bytes()
    assert sorted(p.stem for p in cats_dogs.rglob("*.txt")) == sorted(CATS + DOGS)
    for name, body in archives.items():
        assert (out / "downloads" / name).read_bytes() == body
    return splits


def test_download_checks_extracts_and_converts_to_a_stratified_cats_dogs_split(
    tmp_path, server, archives, digests
):
    out = tmp_path / "oxford"
    result, lines = run(out, server.url, digests)
    assert result == out / "cats_dogs"
    assert_converted(out, archives)
    # the originals are the Oxford layout the readers know, damaged files reported
    items = list(scan(out))
    assert sorted(i[0].path.stem for i in items if not isinstance(i, Skipped)) == sorted(
        CATS + DOGS
    )
    assert sorted(i.path.name for i in items if isinstance(i, Skipped)) == [
        f"{DAMAGED}.jpg",
        f"{BAD_XML}.jpg",
    ]
    # the log says what was skipped and why, and the counts per split and class
    assert "12 images with a head box; 2 skipped" in lines
    assert any(f"{BAD_XML}.xml: malformed XML" in line for line in lines)
    assert any(line.startswith(f"  skipped {out / 'images' / DAMAGED}.jpg: ") for line in lines)
    assert f"{out / 'cats_dogs' / 'train'}: 9 images (cat 3, dog 6)" in lines
    assert f"{out / 'cats_dogs' / 'valid'}: 3 images (cat 1, dog 2)" in lines
    assert sorted(server.requests) == [("/annotations.tar.gz", None), ("/images.tar.gz", None)]
    assert not list(out.rglob("*.part")) and not list(out.rglob("*.extracting"))


def test_second_run_downloads_nothing_and_keeps_the_conversion_unless_forced(
    tmp_path, server, archives, digests
):
    out = tmp_path / "oxford"
    run(out, server.url, digests)
    first = split_of(out / "cats_dogs")
    marker = out / "cats_dogs" / "train" / "untouched"
    marker.write_text("")
    server.requests.clear()

    _, lines = run(out, server.url, digests)
    assert server.requests == [] and marker.exists()
    assert any("already converted" in line for line in lines)

    # extracted folders gone, archives kept: re-extracted from the archives, still no request
    for top in ("images", "annotations"):
        shutil.rmtree(out / top)
    run(out, server.url, digests, force=True)
    assert server.requests == [] and not marker.exists()
    assert split_of(out / "cats_dogs") == first  # same seed, same split
    assert_converted(out, archives)


def test_other_split_settings_redo_the_conversion(tmp_path, server, digests):
    out = tmp_path / "oxford"
    run(out, server.url, digests)
    download_oxford(out, base_url=server.url, val_share=0.5, say=lambda _: None, digests=digests)
    splits = split_of(out / "cats_dogs")
    assert len(splits["valid"]) == 6 and sorted(n in CATS for n in splits["valid"]).count(True) == 2


def local_mirror(tmp_path, archives) -> Path:
    """A folder holding the archives, for file:// URLs."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, body in archives.items():
        (mirror / name).write_bytes(body)
    return mirror


def test_file_url_to_a_local_folder_works(tmp_path, archives, digests):
    mirror = local_mirror(tmp_path, archives)
    out = tmp_path / "oxford"
    (out / "downloads").mkdir(parents=True)
    # file:// cannot resume: start over
    (out / "downloads" / "images.tar.gz.part").write_bytes(b"stale")
    run(out, mirror.as_uri(), digests)  # no trailing slash on purpose
    assert_converted(out, archives)


def test_an_interrupted_download_leaves_only_a_part_file_and_resumes(
    tmp_path, server, archives, digests
):
    out = tmp_path / "oxford"
    server.cut = 100
    with pytest.raises(PetlocError, match=r"ended after 100 of .* bytes; run again to resume"):
        run(out, server.url, digests)
    assert not (out / "downloads" / "images.tar.gz").exists()
    assert (out / "downloads" / "images.tar.gz.part").stat().st_size == 100
    server.cut, server.requests[:] = None, []
    run(out, server.url, digests)
    assert ("/images.tar.gz", "bytes=100-") in server.requests
    assert_converted(out, archives)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_listening_is_one_line_naming_the_url_and_the_way_out(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/"
    with pytest.raises(PetlocError) as err:
        run(tmp_path / "oxford", url, None)
    message = str(err.value)
    assert message.startswith(f"cannot download {url}images.tar.gz: Connection refused;")
    assert "--url" in message and "file://" in message and "\n" not in message
    assert not (tmp_path / "oxford" / "downloads" / "images.tar.gz").exists()


def test_missing_file_on_the_server_is_one_line_with_the_status(tmp_path, server):
    server.files.clear()
    with pytest.raises(PetlocError) as err:
        run(tmp_path / "oxford", server.url, None)
    assert str(err.value).startswith(f"cannot download {server.url}images.tar.gz: HTTP 404 ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda body: np.random.default_rng(0).bytes(5000), "not a readable .tar.gz"),
        (lambda body: body[: len(body) // 2], "not a readable .tar.gz"),
    ],
    ids=["random-bytes", "truncated"],
)
def test_a_bad_archive_is_named_removed_and_fetched_again_next_run(
    tmp_path, server, archives, digests, damage, reason
):
    out = tmp_path / "oxford"
    server.files["images.tar.gz"] = damage(archives["images.tar.gz"])
    # a mirror's digest that matches a broken file: the tar check still refuses it
    with pytest.raises(PetlocError) as err:
        run(out, server.url, md5s(server.files))
    archive = out / "downloads" / "images.tar.gz"
    assert str(err.value).startswith(f"{archive}: {reason}") and "\n" not in str(err.value)
    assert not archive.exists() and not (out / "images").exists()
    server.files["images.tar.gz"] = archives["images.tar.gz"]
    run(out, server.url, digests)
    assert_converted(out, archives)


def test_an_archive_without_the_expected_members_is_refused(tmp_path, server, archives):
    source = tmp_path / "source"
    (source / "annotations" / "xmls").mkdir(parents=True)
    (source / "annotations" / "trainval.txt").write_text("")
    server.files["annotations.tar.gz"] = targz(source, "annotations")
    with pytest.raises(
        PetlocError, match=r"annotations.tar.gz: no member matching annotations/xmls/\*.xml"
    ):
        run(tmp_path / "oxford", server.url, md5s(server.files))
    assert not (tmp_path / "oxford" / "downloads" / "annotations.tar.gz").exists()


def test_val_share_outside_zero_to_one_is_refused_before_any_download(tmp_path, server):
    with pytest.raises(PetlocError, match=r"val_share is 1\.5"):
        download_oxford(tmp_path / "oxford", base_url=server.url, val_share=1.5, say=lambda _: None)
    assert server.requests == []


def test_a_part_file_the_server_cannot_continue_is_downloaded_afresh(
    tmp_path, server, archives, digests
):
    # e.g. interrupted between the last byte and the rename: the server answers 416
    out = tmp_path / "oxford"
    (out / "downloads").mkdir(parents=True)
    (out / "downloads" / "images.tar.gz.part").write_bytes(archives["images.tar.gz"] + b"x")
    run(out, server.url, digests)
    asked = [r for path, r in server.requests if path == "/images.tar.gz"]
    assert asked == [f"bytes={len(archives['images.tar.gz']) + 1}-", None]
    assert_converted(out, archives)


# --- issue #11: only ever replace what petloc made; deletes stay inside `out` ---


def tree(root) -> dict[str, bytes | str]:
    """Every path under `root` (links not followed) -> its bytes, "dir" or "-> target"."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = f"-> {os.readlink(path)}"
        else:
            found[key] = "dir" if path.is_dir() else path.read_bytes()
    return found


def own_photos(folder):
    """A user's own cats_dogs folder: photos and boxes petloc did not make, no settings file."""
    (folder / "train").mkdir(parents=True)
    for i in range(3):
        (folder / "train" / f"my_cat_{i}.jpg").write_bytes(jpeg(100 + i))
        (folder / "train" / f"my_cat_{i}.txt").write_text("1 1 1 20 20\n")


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_a_cats_dogs_folder_petloc_did_not_make_is_refused_before_any_download(
    tmp_path, server, digests, force
):
    out = tmp_path / "oxford"
    own_photos(out / "cats_dogs")
    before = tree(out)
    with pytest.raises(PetlocError) as err:
        run(out, server.url, digests, force=force)
    message = str(err.value)
    assert (
        message.startswith(f"{out / 'cats_dogs'} exists and petloc did not make it")
        and "\n" not in message
    )
    assert "--replace-foreign" in message
    assert tree(out) == before and server.requests == []


def test_a_link_named_cats_dogs_is_refused_and_what_it_points_to_is_untouched(
    tmp_path, server, digests
):
    photos = tmp_path / "my-photos"
    own_photos(photos)
    photos_before = tree(photos)
    out = tmp_path / "oxford"
    out.mkdir()
    (out / "cats_dogs").symlink_to(photos)
    with pytest.raises(PetlocError, match="exists and petloc did not make it"):
        run(out, server.url, digests)
    assert (out / "cats_dogs").is_symlink() and tree(photos) == photos_before


def test_replace_foreign_moves_the_folder_aside_says_so_and_converts(
    tmp_path, server, archives, digests
):
    out = tmp_path / "oxford"
    own_photos(out / "cats_dogs")
    before = tree(out / "cats_dogs")
    _, lines = run(out, server.url, digests, replace_foreign=True)
    [aside] = out.glob("cats_dogs.old-*")
    assert tree(aside) == before  # all of it, byte for byte
    assert f"{out / 'cats_dogs'} was not made by petloc: moved it aside to {aside}" in lines
    assert_converted(out, archives)


def test_an_archive_with_another_md5_is_kept_aside_not_extracted_and_named(
    tmp_path, server, archives, digests
):
    out = tmp_path / "oxford"
    lines = []
    # the official digests: the test's archive is not the official one
    with pytest.raises(PetlocError) as err:
        download_oxford(out, base_url=server.url, val_share=VAL_SHARE, say=lines.append)
    archive = out / "downloads" / "images.tar.gz"
    official = oxford_download.OFFICIAL_MD5["images.tar.gz"]
    message = str(err.value)
    assert message.startswith(
        f"{archive}: MD5 {digests['images.tar.gz']} is not the expected {official}; "
    )
    assert f"--md5 images.tar.gz={digests['images.tar.gz']}" in message and "\n" not in message
    assert (out / "downloads" / "images.tar.gz.bad-md5").read_bytes() == archives["images.tar.gz"]
    assert (
        not archive.exists()
        and not (out / "images").exists()
        and not list(out.rglob("*.extracting"))
    )
    # the user's own digests for a mirror they trust: fetched again and used
    run(out, server.url, digests)
    assert_converted(out, archives)


SENTINEL = "sentinel.txt"


def crafted(tmp_path):
    """The crafted-archive probes: a sentinel outside `out`, the test Oxford source, and `out`."""
    (tmp_path / SENTINEL).write_text("keep")
    source = tmp_path / "source"
    make_oxford(source)
    return source, tmp_path / "oxford"


def outside_out(tmp_path):
    """Everything under tmp_path but `out` (tmp_path / "oxford")."""
    return {k: v for k, v in tree(tmp_path).items() if not k.startswith("oxford")}


def assert_refused_and_nothing_outside(tmp_path, out, server, digests, name, reason, before):
    archive = out / "downloads" / "images.tar.gz"
    with pytest.raises(PetlocError) as err:
        run(out, server.url, digests)
    message = str(err.value)
    assert message.startswith(f"{archive}: refused member {name!r}: ") and "\n" not in message
    assert reason in message
    assert (tmp_path / SENTINEL).read_text() == "keep"
    assert outside_out(tmp_path) == before
    assert (
        not (out / "images").exists()
        and not list(out.rglob("*.extracting"))
        and not archive.exists()
    )


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda t: member("images/alias.jpg", tarfile.SYMTYPE, "Abyssinian_1.jpg"), "a symlink"),
        (lambda t: member("images/evil", tarfile.SYMTYPE, "../../../../" + SENTINEL), "a symlink"),
        (
            lambda t: member("images/alias.jpg", tarfile.LNKTYPE, "images/Abyssinian_1.jpg"),
            "a hard link",
        ),
        (lambda t: member("images/evil", tarfile.LNKTYPE, str(t / SENTINEL)), "a hard link"),
        (lambda t: member(str(t / SENTINEL), data=b"pwned"), "an absolute path"),
        (lambda t: member("images/../../../../" + SENTINEL, data=b"pwned"), "a '..' in its path"),
        (lambda t: member("images/null", tarfile.CHRTYPE), "a character device"),
        (lambda t: member("images/disk", tarfile.BLKTYPE), "a block device"),
        (lambda t: member("images/pipe", tarfile.FIFOTYPE), "a fifo"),
        (lambda t: member("elsewhere/x.jpg", data=b"x"), "not under images/"),
    ],
    ids=[
        "symlink-inside",
        "symlink-out",
        "hardlink-inside",
        "hardlink-out",
        "absolute",
        "dot-dot",
        "char-device",
        "block-device",
        "fifo",
        "outside-top-folder",
    ],
)
def test_a_member_that_is_not_a_plain_file_or_folder_under_images_is_refused(
    tmp_path, server, make, reason
):
    source, out = crafted(tmp_path)
    info, data = make(tmp_path)
    server.files["images.tar.gz"] = targz(source, "images", (info, data))
    before = outside_out(tmp_path)
    assert_refused_and_nothing_outside(
        tmp_path, out, server, md5s(server.files), info.name, reason, before
    )


def path_max_chain(up_to_tmp: int) -> list:
    """CVE-2025-4517's shape: symlinks through nested long-named folders whose resolved path
    exceeds PATH_MAX, so an unpatched filter="data" gives up resolving them, then a link that
    climbs `up_to_tmp` folders out of `images/` and a file written through it."""
    long_dir, steps = "d" * 247, "abcdefghijklmnop"  # 16 * 248 characters: past PATH_MAX (4096)
    members, path = [], "images"
    for step in steps:
        members += [
            member(f"{path}/{long_dir}", tarfile.DIRTYPE),
            member(f"{path}/{step}", tarfile.SYMTYPE, long_dir),
        ]
        path = f"{path}/{long_dir}"
    through = "/".join(steps) + "/" + "l" * 254
    # back to images/, really
    members.append(member(f"images/{through}", tarfile.SYMTYPE, "../" * len(steps)))
    members.append(member("images/escape", tarfile.SYMTYPE, f"{through}/" + "../" * up_to_tmp))
    members.append(member(f"images/escape/{SENTINEL}", data=b"pwned"))
    return members


def test_the_path_max_symlink_chain_of_cve_2025_4517_writes_nothing_outside(tmp_path, server):
    source, out = crafted(tmp_path)
    # images/ is in oxford/downloads/images.tar.gz.extracting/: four folders up is tmp_path
    server.files["images.tar.gz"] = targz(source, "images", *path_max_chain(up_to_tmp=4))
    before = outside_out(tmp_path)
    # refused at its first link, images/a
    assert_refused_and_nothing_outside(
        tmp_path, out, server, md5s(server.files), "images/a", "a symlink", before
    )


def petloc_data_oxford(*args):
    """The real command, as a user runs it: exit code, stdout, stderr."""
    done = petloc_process("data", "oxford", *args)
    return done.returncode, done.stdout, done.stderr


def test_cli_refuses_a_foreign_cats_dogs_in_one_line_and_replace_foreign_moves_it_aside(
    tmp_path, archives, digests
):
    mirror = local_mirror(tmp_path, archives)
    out = tmp_path / "oxford"
    own_photos(out / "cats_dogs")
    before = tree(out / "cats_dogs")
    mirror_args = ["--out", out, "--url", mirror.as_uri(), "--val-share", VAL_SHARE]
    md5_args = [arg for name, md5 in digests.items() for arg in ("--md5", f"{name}={md5}")]

    code, _, err = petloc_data_oxford(*mirror_args, *md5_args, "--force")
    assert code == 2 and err.startswith(
        f"petloc: error: {out / 'cats_dogs'} exists and petloc did not make it"
    )
    assert err.count("\n") == 1 and tree(out / "cats_dogs") == before

    code, _, err = petloc_data_oxford(*mirror_args, "--md5", "images.tar.gz=abc")
    assert (
        code == 2
        and err.startswith("petloc: error: --md5 images.tar.gz=abc: expected NAME=MD5")
        and err.count("\n") == 1
    )

    code, stdout, _ = petloc_data_oxford(*mirror_args, *md5_args, "--replace-foreign")
    [aside] = out.glob("cats_dogs.old-*")
    assert code == 0 and f"moved it aside to {aside}" in stdout and tree(aside) == before
    assert_converted(out, archives)
