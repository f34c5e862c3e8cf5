"""`download_oxford` against a tiny fake Oxford-IIIT Pet served from 127.0.0.1 or file://."""

import io
import shutil
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest

from petloc.data.oxford_download import download_oxford
from petloc.data.readers import scan
from petloc.data.records import Skipped
from petloc.errors import PetlocError

W, H = 48, 40
CATS = ["Abyssinian_1", "Bengal_2", "Birman_3", "Persian_4"]
DOGS = ["beagle_5", "boxer_6", "chihuahua_7", "pug_8", "pug_9", "samoyed_10", "shiba_inu_11", "havanese_12"]
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
    species = {**{n: "cat" for n in CATS + [NO_XML]}, **{n: "dog" for n in DOGS + [DAMAGED, BAD_XML]}}
    for name, kind in species.items():
        (images / f"{name}.jpg").write_bytes(jpeg(index(name)))
        if name != NO_XML:
            (xmls / f"{name}.xml").write_text(voc_xml(kind, index(name)))
    (images / f"{DAMAGED}.jpg").write_bytes(jpeg(index(DAMAGED))[:300])
    (xmls / f"{BAD_XML}.xml").write_text("<annotation><size>")
    listed = {n: f"{n} 1 {1 if kind == 'cat' else 2} 1\n" for n, kind in species.items()}  # NAME CLASS SPECIES BREED
    (root / "annotations" / "trainval.txt").write_text("".join(v for n, v in listed.items() if n != NO_XML))
    (root / "annotations" / "test.txt").write_text(listed[NO_XML])


def targz(folder, top: str, extra: tarfile.TarInfo | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder / top, arcname=top)
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    source = tmp_path_factory.mktemp("oxford-source")
    make_oxford(source)
    return {"images.tar.gz": targz(source, "images"), "annotations.tar.gz": targz(source, "annotations")}


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
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def run(out, url, **kwargs):
    lines = []
    result = download_oxford(out, base_url=url, val_share=VAL_SHARE, log=lines.append, **kwargs)
    return result, lines


def split_of(cats_dogs) -> dict[str, dict[str, str]]:
    """split -> {image name without suffix: its .txt line}."""
    return {
        split: {p.stem: p.with_suffix(".txt").read_text() for p in sorted((cats_dogs / split).glob("*.jpg"))}
        for split in ("train", "valid")
    }


def assert_converted(out, archives):
    cats_dogs = out / "cats_dogs"
    splits = split_of(cats_dogs)
    assert sorted([*splits["train"], *splits["valid"]]) == sorted(CATS + DOGS)  # no skipped, no xml-less image
    for lines in splits.values():
        for name, line in lines.items():
            assert line == expected_line(name)
    # stratified by species: 1 cat + 2 dogs of 3 in valid, the rest in train
    assert sorted(n in CATS for n in splits["valid"]) == [False, False, True]
    # the copies are the original files, and every .txt has its image
    for split, lines in splits.items():
        for name in lines:
            assert (cats_dogs / split / f"{name}.jpg").read_bytes() == (out / "images" / f"{name}.jpg").read_bytes()
    assert sorted(p.stem for p in cats_dogs.rglob("*.txt")) == sorted(CATS + DOGS)
    for name, body in archives.items():
        assert (out / "downloads" / name).read_bytes() == body
    return splits


def test_download_checks_extracts_and_converts_to_a_stratified_cats_dogs_split(tmp_path, server, archives):
    out = tmp_path / "oxford"
    result, lines = run(out, server.url)
    assert result == out / "cats_dogs"
    assert_converted(out, archives)
    # the originals are the Oxford layout the readers know, damaged files reported
    items = list(scan(out))
    assert sorted(i[0].path.stem for i in items if not isinstance(i, Skipped)) == sorted(CATS + DOGS)
    assert sorted(i.path.name for i in items if isinstance(i, Skipped)) == [f"{DAMAGED}.jpg", f"{BAD_XML}.jpg"]
    # the log says what was skipped and why, and the counts per split and class
    assert "12 images with a head box; 2 skipped" in lines
    assert any(f"{BAD_XML}.xml: malformed XML" in line for line in lines)
    assert any(line.startswith(f"  skipped {out / 'images' / DAMAGED}.jpg: ") for line in lines)
    assert f"{out / 'cats_dogs' / 'train'}: 9 images (cat 3, dog 6)" in lines
    assert f"{out / 'cats_dogs' / 'valid'}: 3 images (cat 1, dog 2)" in lines
    assert sorted(server.requests) == [("/annotations.tar.gz", None), ("/images.tar.gz", None)]
    assert not list(out.rglob("*.part")) and not list(out.rglob("*.extracting"))


def test_second_run_downloads_nothing_and_keeps_the_conversion_unless_forced(tmp_path, server, archives):
    out = tmp_path / "oxford"
    run(out, server.url)
    first = split_of(out / "cats_dogs")
    marker = out / "cats_dogs" / "train" / "untouched"
    marker.write_text("")
    server.requests.clear()

    _, lines = run(out, server.url)
    assert server.requests == [] and marker.exists()
    assert any("already converted" in line for line in lines)

    # extracted folders gone, archives kept: re-extracted from the archives, still no request
    for top in ("images", "annotations"):
        shutil.rmtree(out / top)
    run(out, server.url, force=True)
    assert server.requests == [] and not marker.exists()
    assert split_of(out / "cats_dogs") == first  # same seed, same split
    assert_converted(out, archives)


def test_other_split_settings_redo_the_conversion(tmp_path, server, archives):
    out = tmp_path / "oxford"
    run(out, server.url)
    download_oxford(out, base_url=server.url, val_share=0.5, log=lambda _: None)
    splits = split_of(out / "cats_dogs")
    assert len(splits["valid"]) == 6 and sorted(n in CATS for n in splits["valid"]).count(True) == 2


def test_file_url_to_a_local_folder_works(tmp_path, archives):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, body in archives.items():
        (mirror / name).write_bytes(body)
    out = tmp_path / "oxford"
    (out / "downloads").mkdir(parents=True)
    (out / "downloads" / "images.tar.gz.part").write_bytes(b"stale")  # file:// cannot resume: start over
    run(out, mirror.as_uri())  # no trailing slash on purpose
    assert_converted(out, archives)


def test_an_interrupted_download_leaves_only_a_part_file_and_resumes(tmp_path, server, archives):
    out = tmp_path / "oxford"
    server.cut = 100
    with pytest.raises(PetlocError, match="ended after 100 of .* bytes; run again to resume"):
        run(out, server.url)
    assert not (out / "downloads" / "images.tar.gz").exists()
    assert (out / "downloads" / "images.tar.gz.part").stat().st_size == 100
    server.cut, server.requests[:] = None, []
    run(out, server.url)
    assert ("/images.tar.gz", "bytes=100-") in server.requests
    assert_converted(out, archives)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_listening_is_one_line_naming_the_url_and_the_way_out(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/"
    with pytest.raises(PetlocError) as err:
        run(tmp_path / "oxford", url)
    message = str(err.value)
    assert message.startswith(f"cannot download {url}images.tar.gz: Connection refused;")
    assert "--url" in message and "file://" in message and "\n" not in message
    assert not (tmp_path / "oxford" / "downloads" / "images.tar.gz").exists()


def test_missing_file_on_the_server_is_one_line_with_the_status(tmp_path, server):
    server.files.clear()
    with pytest.raises(PetlocError) as err:
        run(tmp_path / "oxford", server.url)
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
def test_a_bad_archive_is_named_removed_and_fetched_again_next_run(tmp_path, server, archives, damage, reason):
    out = tmp_path / "oxford"
    server.files["images.tar.gz"] = damage(archives["images.tar.gz"])
    with pytest.raises(PetlocError) as err:
        run(out, server.url)
    archive = out / "downloads" / "images.tar.gz"
    assert str(err.value).startswith(f"{archive}: {reason}") and "\n" not in str(err.value)
    assert not archive.exists() and not (out / "images").exists()
    server.files["images.tar.gz"] = archives["images.tar.gz"]
    run(out, server.url)
    assert_converted(out, archives)


def test_an_archive_without_the_expected_members_is_refused(tmp_path, server, archives):
    source = tmp_path / "source"
    (source / "annotations" / "xmls").mkdir(parents=True)
    (source / "annotations" / "trainval.txt").write_text("")
    server.files["annotations.tar.gz"] = targz(source, "annotations")
    with pytest.raises(PetlocError, match=r"annotations.tar.gz: no member matching annotations/xmls/\*.xml"):
        run(tmp_path / "oxford", server.url)
    assert not (tmp_path / "oxford" / "downloads" / "annotations.tar.gz").exists()


def evil_file() -> tarfile.TarInfo:
    info = tarfile.TarInfo("../evil")
    info.size = 4
    return info


def evil_link() -> tarfile.TarInfo:
    info = tarfile.TarInfo("images/evil")
    info.type, info.linkname = tarfile.SYMTYPE, "../../../../evil"
    return info


@pytest.mark.parametrize("member", [evil_file, evil_link], ids=["dot-dot-path", "symlink-out"])
def test_members_leading_outside_are_refused_and_nothing_lands_outside(tmp_path, server, member):
    source = tmp_path / "source"
    make_oxford(source)
    server.files["images.tar.gz"] = targz(source, "images", extra=member())
    out = tmp_path / "deep" / "oxford"
    with pytest.raises(PetlocError, match="images.tar.gz: unsafe member"):
        run(out, server.url)
    assert [p for p in tmp_path.rglob("evil") if p.is_symlink() or p.exists()] == []
    assert not (out / "images").exists() and not (out / "downloads" / "images.tar.gz").exists()


def test_val_share_outside_zero_to_one_is_refused_before_any_download(tmp_path, server):
    with pytest.raises(PetlocError, match="val_share is 1.5"):
        download_oxford(tmp_path / "oxford", base_url=server.url, val_share=1.5, log=lambda _: None)
    assert server.requests == []


def test_a_part_file_the_server_cannot_continue_is_downloaded_afresh(tmp_path, server, archives):
    # e.g. interrupted between the last byte and the rename: the server answers 416
    out = tmp_path / "oxford"
    (out / "downloads").mkdir(parents=True)
    (out / "downloads" / "images.tar.gz.part").write_bytes(archives["images.tar.gz"] + b"x")
    run(out, server.url)
    asked = [r for path, r in server.requests if path == "/images.tar.gz"]
    assert asked == [f"bytes={len(archives['images.tar.gz']) + 1}-", None]
    assert_converted(out, archives)
