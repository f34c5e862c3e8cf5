"""Reading is bounded (issue 32, section 3): a FIFO, a device, a folder or a huge file where
petloc expects a photo, an annotation, an experiment or its own state is one error line, at
once, with memory flat; SIGTERM stops a predict; a split folder that is another split is refused.

A test that would hang or eat memory on a petloc without these bounds runs the read on a
daemon thread with a deadline (and unblocks a FIFO afterwards), or in a subprocess with a
deadline and a cap on its address space, so a regression fails instead of taking the machine."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest

from petloc.data.check import check_dataset
from petloc.data.images import BadImage, read_image
from petloc.data.pipeline import dataset_digest
from petloc.errors import PetlocError
from tests.helpers import PETLOC, invoke, jpeg, petloc_env, photo

GIGABYTE = 1 << 30
DEADLINE_S = 10  # a bounded read of a tiny file answers in milliseconds


def write_pair(folder: Path, name: str, line: str = "1 4 4 40 30") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.jpg").write_bytes(jpeg(photo(w=64, h=48)))
    (folder / f"{name}.txt").write_text(line)
    return folder / f"{name}.jpg"


def sparse(path: Path, size: int = GIGABYTE) -> Path:
    """A file of `size` bytes that costs no disk: what a careless `truncate` leaves."""
    with open(path, "wb") as file:
        file.truncate(size)
    return path


def within_deadline(call, fifo: Path | None = None, seconds: float = DEADLINE_S):
    """`call()`'s result or exception; fails the test if it is still running after `seconds`
    (a read blocked on `fifo` is then released, so no thread is left waiting)."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = call()
        except BaseException as err:  # noqa: BLE001  (handed to the test)
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if fifo is not None:
            _release(fifo)
        pytest.fail(f"still blocked after {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _release(fifo: Path) -> None:
    """Open the other end of `fifo` and close it: a reader blocked in open() gets end-of-file,
    a writer blocked in open() its reader."""
    for flags in (os.O_WRONLY | os.O_NONBLOCK, os.O_RDONLY | os.O_NONBLOCK):
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, flags))


# ---- photos: PETLOC_MAX_IMAGE_BYTES everywhere, no FIFO, no device ------------------------


def test_a_fifo_named_x_jpg_is_refused_at_once(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    with pytest.raises(BadImage, match=r"^is a named pipe \(FIFO\), not a regular file$"):
        within_deadline(lambda: read_image(fifo), fifo)


def test_the_image_byte_limit_applies_to_files_too_not_only_to_the_server(tmp_path, monkeypatch):
    path = tmp_path / "photo.jpg"
    path.write_bytes(jpeg(photo()))
    monkeypatch.setenv("PETLOC_MAX_IMAGE_BYTES", str(path.stat().st_size - 1))
    size = path.stat().st_size
    with pytest.raises(
        BadImage,
        match=rf"is {size} bytes, over the limit of {size - 1} bytes \(PETLOC_MAX_IMAGE_BYTES\)",
    ):
        read_image(path)
    monkeypatch.setenv("PETLOC_MAX_IMAGE_BYTES", str(path.stat().st_size))
    assert read_image(path).pixels.shape == (48, 64, 3)


def test_a_mistyped_image_byte_limit_is_one_line_before_predict_loads_its_model(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("PETLOC_MAX_IMAGE_BYTES", "20MB")
    with pytest.raises(
        PetlocError,
        match=r"^PETLOC_MAX_IMAGE_BYTES=20MB: expected a whole number above 0, at most 2147483647$",
    ):
        invoke("predict", tmp_path / "no-such-model.keras", tmp_path / "photo.jpg")


# ---- annotations, datasets: bounded and flat ----------------------------------------------


def test_data_check_on_a_sparse_gigabyte_annotation_stays_small_and_quick(tmp_path):
    data = tmp_path / "data"
    write_pair(data, "a")
    write_pair(data, "b")
    sparse(data / "b.txt")
    check = [*PETLOC, "data", "check", str(data), "--json"]
    result, peak_mb = run_measured(check, timeout=60, memory_cap=4 * GIGABYTE)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["usable"] == 1
    assert report["skipped"] == [
        {
            "path": str(data / "b.jpg"),
            "reason": f"b.txt: is {GIGABYTE} bytes, over the limit of 1000000 bytes",
        }
    ]
    assert peak_mb < 300, f"data check peaked at {peak_mb} MB"


def test_the_dataset_digest_reads_a_sparse_gigabyte_annotation_in_little_memory(tmp_path):
    write_pair(tmp_path, "a")
    sparse(tmp_path / "b.txt")
    tracemalloc.start()
    try:
        before = dataset_digest(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * (1 << 20), f"the digest held {peak >> 20} MB"
    sparse(tmp_path / "b.txt", GIGABYTE + 1)
    assert dataset_digest(tmp_path) != before  # a file over its limit still counts by its size


def test_a_fifo_annotation_is_skipped_with_its_reason(tmp_path):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b")
    (tmp_path / "b.txt").unlink()
    os.mkfifo(tmp_path / "b.txt")
    report = within_deadline(lambda: check_dataset(tmp_path), tmp_path / "b.txt")
    assert report.usable == 1
    assert [(s.path.name, s.reason) for s in report.skipped] == [
        ("b.jpg", "b.txt: is a named pipe (FIFO), not a regular file")
    ]


# ---- a split that is another split -------------------------------------------------------


def test_a_split_folder_linked_to_another_split_is_refused_in_one_line(tmp_path):
    write_pair(tmp_path / "train", "a")
    write_pair(tmp_path / "train", "b")
    (tmp_path / "valid").symlink_to("train")
    with pytest.raises(
        PetlocError,
        match=r"valid: is the same folder as .*train \(a link\): a photo cannot be in two",
    ):
        check_dataset(tmp_path)


def test_a_photo_linked_into_a_second_split_is_used_once(tmp_path):
    write_pair(tmp_path / "train", "a")
    write_pair(tmp_path / "train", "b")
    write_pair(tmp_path / "valid", "c")
    (tmp_path / "valid" / "a.jpg").symlink_to(tmp_path / "train" / "a.jpg")
    (tmp_path / "valid" / "a.txt").write_text("1 4 4 40 30")
    report = check_dataset(tmp_path)
    assert report.counts == {"train": {"cat": 2, "dog": 0}, "valid": {"cat": 1, "dog": 0}}
    assert [(str(s.path), s.reason) for s in report.skipped] == [
        (
            str(tmp_path / "valid" / "a.jpg"),
            f"the same file as {tmp_path / 'train' / 'a.jpg'} (a link): used once",
        )
    ]


# ---- experiment files and petloc's own state ------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "device", "huge"])
def test_an_experiment_file_that_is_no_small_regular_file_is_one_line(tmp_path, kind):
    from petloc.config import load_experiment

    path = {
        "fifo": tmp_path / "exp.yaml",
        "device": Path("/dev/zero"),
        "huge": tmp_path / "huge.yaml",
    }[kind]
    if kind == "fifo":
        os.mkfifo(path)
    if kind == "huge":
        path.write_text("# padding\n" * 200_000)
    reason = {
        "fifo": "is a named pipe",
        "device": "is a device",
        "huge": "is 2000000 bytes, over the limit",
    }[kind]
    with pytest.raises(PetlocError, match=rf"^{path}: {reason}"):
        within_deadline(lambda: load_experiment(path), path if kind == "fifo" else None)


def test_a_fifo_in_place_of_sweep_json_is_one_line_not_a_hang(tmp_path):
    from petloc.search.state import _read_state

    os.mkfifo(tmp_path / "sweep.json")
    with pytest.raises(PetlocError, match=r"sweep.json: is a named pipe"):
        within_deadline(lambda: _read_state(tmp_path / "sweep.json"), tmp_path / "sweep.json")


def test_a_fifo_in_place_of_a_lock_file_is_one_line_not_a_hang(tmp_path):
    from petloc.files import waiting_lock

    lock = tmp_path / "mlflow.db.lock"
    os.mkfifo(lock)

    def take():
        with waiting_lock(lock):
            pass

    with pytest.raises(PetlocError, match=r"mlflow.db.lock: is a named pipe"):
        within_deadline(take, lock)


def test_a_read_stops_one_byte_past_its_limit_whatever_the_file_says(tmp_path):
    # /proc's files say they hold 0 bytes; the read itself is what is bounded.
    from petloc.files import read_bounded

    assert os.stat("/proc/self/status").st_size == 0
    with pytest.raises(PetlocError, match=r"/proc/self/status: is over the limit of 10 bytes"):
        read_bounded("/proc/self/status", 10)
    (tmp_path / "ten").write_bytes(b"0123456789")
    assert read_bounded(tmp_path / "ten", 10) == b"0123456789"


# ---- predict, as a user runs it ------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from petloc.model import Hyperparameters, build_model

    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    build_model(Hyperparameters(width=0.25, head_units=8), 32).save(path)
    return path


@pytest.mark.slow
def test_predict_answers_a_fifo_a_device_a_folder_and_a_huge_photo_with_error_lines_and_goes_on(
    model, tmp_path
):
    os.mkfifo(tmp_path / "x.jpg")
    sparse(tmp_path / "big.jpg")
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "good.jpg").write_bytes(jpeg(photo()))
    images = [
        tmp_path / name for name in ("x.jpg", "/dev/zero", "big.jpg", "folder.jpg", "good.jpg")
    ]
    predict = [*PETLOC, "predict", model, *images, "--json"]
    result, peak_mb = run_measured(predict, timeout=120, memory_cap=6 * GIGABYTE)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 1, result.stderr  # some images failed, the others were answered
    assert [row.get("error") for row in rows] == [
        "is a named pipe (FIFO), not a regular file",
        "is a device, not a regular file",
        f"is {GIGABYTE} bytes, over the limit of 20000000 bytes (PETLOC_MAX_IMAGE_BYTES)",
        "is a folder, not a file",
        None,
    ]
    assert rows[-1]["label"] in ("cat", "dog") and "Traceback" not in result.stderr
    assert peak_mb < 1300, f"predict peaked at {peak_mb} MB"  # TensorFlow alone is about 0.8 GB


@pytest.mark.slow
def test_sigterm_stops_a_predict_given_a_fifo(model, tmp_path):
    os.mkfifo(tmp_path / "x.jpg")
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg(photo()))
    for i in range(3000):  # work left to do when the signal comes
        (tmp_path / f"copy{i}.jpg").symlink_to(good)
    images = [tmp_path / "x.jpg", *(tmp_path / f"copy{i}.jpg" for i in range(3000))]
    process = subprocess.Popen(
        [*PETLOC, "predict", str(model), *map(str, images)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=petloc_env(),
        preexec_fn=_cap(6 * GIGABYTE),
    )
    try:
        first = _first_line(process, timeout=90)  # the FIFO's error line, once the model is loaded
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        stderr = process.stderr.read()
        assert first.startswith(f"{tmp_path / 'x.jpg'}: error: is a named pipe"), first
        # 1: it had answered every image already
        assert process.returncode in (128 + signal.SIGTERM, 1), stderr
        assert "Traceback" not in stderr
    finally:
        if process.poll() is None:
            process.kill()
            _release(tmp_path / "x.jpg")
            process.wait()


def _first_line(process: subprocess.Popen, timeout: float) -> str:
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return lines[0] if lines else ""


# ---- measuring a petloc process --------------------------------------------------------------


def _cap(limit: int):
    """A child's address space capped: a petloc that reads without a bound fails in it,
    not the machine."""
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


# Run by a small launcher, whose own children are only the petloc process: a child's peak
# memory as the kernel counts it includes what its parent held when it forked (pytest's).
_LAUNCHER = """
import json, resource, subprocess, sys
limit, timeout, args = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
cap = lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, preexec_fn=cap)
    answer = {"code": done.returncode, "out": done.stdout, "err": done.stderr}
except subprocess.TimeoutExpired:
    answer = {"code": None, "out": "", "err": ""}
answer["peak_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
print(json.dumps(answer))
"""


def run_measured(args, timeout: float, memory_cap: int) -> tuple[subprocess.CompletedProcess, int]:
    """`args` run to its end (killed after `timeout` s) with its address space capped, and the
    peak memory (MB) of that one process."""
    launched = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, str(memory_cap), str(timeout), *map(str, args)],
        capture_output=True,
        text=True,
        env=petloc_env(),
        timeout=timeout + 30,
    )
    answer = json.loads(launched.stdout)
    assert answer["code"] is not None, (
        f"{' '.join(map(str, args[2:]))}: still running after {timeout} s"
    )
    return subprocess.CompletedProcess(args, answer["code"], answer["out"], answer["err"]), answer[
        "peak_mb"
    ]
