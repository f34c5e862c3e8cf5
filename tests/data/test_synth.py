"""The synthetic pet generator: deterministic files in the cats_dogs layout, honest head boxes."""

import re

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from petloc.data import readers, synth
from petloc.data.synth import HEAD_SIZE_RANGE, generate, render

NAME = re.compile(r"synth_(cat|dog)_\d{5}")


def files(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def annotations(folder):
    """name -> (CLASS, x1, y1, x2, y2) as written in each .txt file."""
    result = {}
    for text in sorted(folder.glob("*.txt")):
        fields = text.read_text().split()
        assert len(fields) == 5, text.name
        result[text.stem] = (int(fields[0]), *(float(v) for v in fields[1:]))
    return result


def smoothed(pixels):
    return cv2.GaussianBlur(pixels.astype(np.float32), (0, 0), 1.5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth") / "set", count=40, seed=0, size=64)


def test_same_seed_gives_identical_files(tmp_path, dataset):
    again = generate(tmp_path / "again", count=40, seed=0, size=64)
    assert files(again) == files(dataset)


def test_different_seed_gives_different_images(tmp_path, dataset):
    other = files(generate(tmp_path / "other", count=40, seed=1, size=64))
    ours = files(dataset)
    shared = [name for name in ours if name.endswith(".jpg") and name in other]
    assert len(shared) == 21  # the names follow the classes drawn: some are taken in both sets
    # a new picture under each of them
    assert [name for name in shared if other[name] == ours[name]] == []


def test_count_is_honoured_and_a_rerun_replaces_the_old_set(tmp_path):
    folder = generate(tmp_path / "set", count=7, seed=0, size=64)
    assert len(list(folder.glob("*.jpg"))) == len(list(folder.glob("*.txt"))) == 7
    (folder / "README.md").write_text("not ours")
    generate(folder, count=3, seed=5, size=64)
    assert len(list(folder.glob("*.jpg"))) == len(list(folder.glob("*.txt"))) == 3
    assert (folder / "README.md").exists()


def test_files_are_in_the_cats_dogs_layout(dataset):
    images = {path.stem for path in dataset.glob("*.jpg")}
    notes = annotations(dataset)
    assert images == set(notes)
    for name, (class_id, x1, y1, x2, y2) in notes.items():
        assert NAME.fullmatch(name), name
        assert class_id == (1 if "_cat_" in name else 2), name
        pixels = cv2.imread(str(dataset / f"{name}.jpg"))
        assert pixels.shape == (64, 64, 3), name
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64, name


def test_both_classes_are_present(dataset):
    class_ids = [note[0] for note in annotations(dataset).values()]
    assert (class_ids.count(1), class_ids.count(2)) == (11, 29)  # seed 0, 40 pets


def test_the_dataset_reader_accepts_every_file(dataset):
    items = list(readers.scan(dataset, on_bad="fail"))
    assert len(items) == 40
    notes = annotations(dataset)
    for sample, pixels in items:
        assert sample.label == ("cat", "dog")[int(notes[sample.path.stem][0]) - 1]
        assert pixels.shape == (64, 64, 3)


def test_files_hold_what_render_draws_for_seed_and_index(dataset):
    image, label, box = render(np.random.default_rng([0, 12]), 64)
    name = f"synth_{('cat', 'dog')[label]}_00012"
    assert annotations(dataset)[name] == (label + 1, *(float(round(v)) for v in box))
    written = cv2.cvtColor(cv2.imread(str(dataset / f"{name}.jpg")), cv2.COLOR_BGR2RGB)
    # the same picture up to JPEG loss (which is mostly the fine noise, hence the blur)
    assert np.abs(smoothed(written) - smoothed(image)).mean() < 3


def test_render_is_deterministic():
    first, second = render(np.random.default_rng(7)), render(np.random.default_rng(7))
    assert np.array_equal(first[0], second[0]) and first[1:] == second[1:]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.sampled_from([32, 64, 128]))
def test_render_gives_an_rgb_image_a_label_and_a_head_sized_box(seed, size):
    image, label, (x1, y1, x2, y2) = render(np.random.default_rng(seed), size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert label in (0, 1)
    assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
    # the head's longest side is drawn at HEAD_SIZE_RANGE of the image; the image border
    # may cut off up to 15% of it
    low, high = HEAD_SIZE_RANGE
    assert low * size * 0.85 - 0.5 <= max(x2 - x1, y2 - y1) <= high * size + 1e-6


@pytest.mark.parametrize("make_head", [synth._cat_head, synth._dog_head])
def test_the_box_is_tight_around_everything_drawn_for_the_head(make_head):
    rng = np.random.default_rng(3)
    for _ in range(20):
        head = make_head(rng)
        to_px, scale = synth._place_head(rng, head, 128)
        canvas = np.zeros((128, 128, 3), np.float32)
        covered = synth._draw_head(canvas, np.full_like(canvas, 200), head, to_px, scale)
        ys, xs = np.nonzero(covered)  # pixels at least half covered: face, ears, muzzle
        drawn = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        # within cv2's anti-aliasing fringe; a missing ear would be off by many pixels
        assert np.abs(np.array(synth._head_box(head, to_px, 128)) - drawn).max() <= 1.5


def test_head_position_and_size_vary():
    boxes = np.array([render(np.random.default_rng(seed), 64)[2] for seed in range(30)])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    sides = boxes[:, 2:] - boxes[:, :2]
    assert centres.std(0).min() > 6 and sides.std(0).min() > 2


def test_classes_are_roughly_30_percent_cats():
    labels = [render(np.random.default_rng([99, index]), 32)[1] for index in range(200)]
    assert labels.count(0) == 58  # 29% cats: each pet is a dog with probability DOG_SHARE = 0.7


def test_too_small_an_image_is_refused():
    with pytest.raises(ValueError, match="at least 32"):
        render(np.random.default_rng(0), 16)


@pytest.mark.slow
def test_sigterm_stops_a_large_synth_at_once(tmp_path):
    """All images went to the pool before the first was waited for, and the pool finished them
    after SIGTERM: a stopped `data synth` of a huge count went on writing for minutes."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "synth"
    code = (
        "from petloc import stopping\nfrom petloc.data.synth import generate\nstopping.install()\n"
        f"generate({str(out)!r}, count=10**9, size=32)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        time.sleep(8)  # the old code is still queueing images, and writing some
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    finally:
        proc.kill()
    written = len(list(out.glob("*.jpg")))
    time.sleep(1)
    assert len(list(out.glob("*.jpg"))) == written  # nothing is written after the stop
    assert not (out / ".synth.json").exists()  # an incomplete set is never taken for a whole one


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--count", "99999999999999999999"],
            "'--count': 99999999999999999999 is not in the range 1<=x<=1000000",
        ),
        (
            ["--seed", "-99999999999999999999"],
            "'--seed': -99999999999999999999 is not in the range 0<=x<=2147483647",
        ),
    ],
)
def test_synth_counts_and_seeds_are_bounded(tmp_path, args, message):
    """A negative seed was NumPy's traceback; a 20-digit count was accepted and filled the disk."""
    from click.testing import CliRunner

    from petloc.cli import cli

    result = CliRunner().invoke(cli, ["data", "synth", "--out", str(tmp_path / "s"), *args])
    assert result.exit_code == 2 and message in result.output and not (tmp_path / "s").exists()
