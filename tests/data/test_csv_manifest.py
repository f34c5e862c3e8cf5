"""The labels.csv manifest: anyone's photos with a class and a head box per row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from petloc.data.check import check_dataset
from petloc.data.classes import SPECIES, Classes
from petloc.data.pipeline import load_arrays, split_train_val
from petloc.data.readers import detect_layout
from petloc.errors import PetlocError
from tests.data.test_readers import items
from tests.helpers import encode, photo

SIZE = 32


def manifest(root, rows: list[str], header: str = "path,label,x1,y1,x2,y2", photos=()):
    """labels.csv with `rows`, and a 64x48 photo for every name in `photos`."""
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(photos):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(encode(photo(i)))
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def animals(root, per_class: int = 4):
    """rabbits, hamsters and ferrets in pics/, four each, with split and species columns."""
    names = [
        f"pics/{kind}{n}.jpg" for kind in ("rabbit", "hamster", "ferret") for n in range(per_class)
    ]
    rows = [f"{name},{name[5:-5]},4,4,30,30,,rodent" for name in names]
    return manifest(root, rows, "path,label,x1,y1,x2,y2,split,species", names)


def test_a_manifest_is_detected_and_read_with_classes_from_its_label_column(tmp_path):
    animals(tmp_path)
    assert detect_layout(tmp_path) == "csv"
    arrays = load_arrays(tmp_path, SIZE, cache_dir=None, labels="breed")
    assert arrays.classes == Classes(("ferret", "hamster", "rabbit"), ("rodent",) * 3)
    assert arrays.boxes[0].tolist() == pytest.approx([4 / 64, 4 / 48, 30 / 64, 30 / 48])
    assert arrays.paths[0] == str(tmp_path / "pics" / "rabbit0.jpg")
    train, val = split_train_val(arrays, 0.25, seed=0)
    assert np.bincount(val.labels).tolist() == [1, 1, 1] and len(train) == 9


def test_with_labels_species_the_species_column_is_the_class(tmp_path):
    names = ["a.jpg", "b.jpg", "c.jpg"]
    rows = ["a.jpg,Bengal,4,4,30,30,cat", "b.jpg,pug,4,4,30,30,dog", "c.jpg,boxer,4,4,30,30,dog"]
    manifest(tmp_path, rows, "path,label,x1,y1,x2,y2,species", names)
    assert load_arrays(tmp_path, SIZE, cache_dir=None).classes == SPECIES
    breeds = load_arrays(tmp_path, SIZE, cache_dir=None, labels="breed")
    assert breeds.classes == Classes(("Bengal", "boxer", "pug"), ("cat", "dog", "dog"))


def test_the_split_column_is_used_and_check_counts_each_class_per_split(tmp_path):
    names = [f"{kind}{n}.jpg" for kind in ("rabbit", "hamster") for n in range(3)]
    splits = ["train", "valid", "test"] * 2
    rows = [
        f"{name},{name[:-5]},4,4,30,30,{split}" for name, split in zip(names, splits, strict=True)
    ]
    manifest(tmp_path, rows, "path,label,x1,y1,x2,y2,split", names)
    report = check_dataset(tmp_path)
    assert report.layout == "csv"
    assert report.counts == {
        "train": {"hamster": 1, "rabbit": 1},
        "valid": {"hamster": 1, "rabbit": 1},
        "test": {"hamster": 1, "rabbit": 1},
    }
    train, val = split_train_val(load_arrays(tmp_path, SIZE, cache_dir=None), 0.5, seed=0)
    assert [Path(p).name for p in val.paths] == ["rabbit1.jpg", "hamster1.jpg"]  # the rows' order
    assert [Path(p).name for p in train.paths] == ["rabbit0.jpg", "hamster0.jpg"]


def test_missing_columns_are_one_line_naming_the_file_and_the_columns(tmp_path):
    manifest(tmp_path, ["a.jpg,cat,1,1"], "path,label,x1,y1", ["a.jpg"])
    with pytest.raises(PetlocError) as err:
        list(load_arrays(tmp_path, SIZE, cache_dir=None))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'labels.csv'} row 1: missing column(s) x2, y2 ")
    assert "\n" not in message


@pytest.mark.parametrize(
    "row, named, reason",
    [
        ("b.jpg,cat,4,four,30,30", "b.jpg", "labels.csv row 3: y1 is 'four', expected a number"),
        ("gone.jpg,cat,4,4,30,30", "gone.jpg", "labels.csv row 3: "),
        (
            "b.jpg,cat,4,4,90,30",
            "b.jpg",
            "labels.csv row 3: box (4, 4, 90, 30) lies outside the 64x48 image by 26 px",
        ),
        ("b.jpg,,4,4,30,30", "b.jpg", "labels.csv row 3: empty label"),
        (
            "b.jpg,cat,4,4,30,30,later",
            "b.jpg",
            "labels.csv row 3: split 'later' is not train, valid or test",
        ),
        (
            "a.jpg,cat,4,4,30,30",
            "a.jpg",
            "labels.csv row 3: the photo is also on row 2; one head box per photo",
        ),
        (
            "../b.jpg,cat,4,4,30,30",
            "labels.csv",
            "row 3: path '../b.jpg' is not inside the manifest's folder",
        ),
    ],
)
def test_a_bad_row_is_skipped_naming_the_file_and_row_and_fails_with_on_bad_fail(
    tmp_path, row, named, reason
):
    manifest(
        tmp_path, ["a.jpg,dog,4,4,30,30", row], "path,label,x1,y1,x2,y2,split", ["a.jpg", "b.jpg"]
    )
    good, skipped = items(tmp_path)
    assert [s.path.name for s, _ in good] == ["a.jpg"]
    [bad] = skipped
    assert (bad.path, bad.reason[: len(reason)]) == (tmp_path / named, reason)
    with pytest.raises(PetlocError, match=f"^{tmp_path / named}: "):
        items(tmp_path, on_bad="fail")


def test_the_manifest_is_part_of_the_cache_key(tmp_path):
    data, cache = animals(tmp_path / "photos"), tmp_path / "cache"
    first = load_arrays(data, SIZE, cache_dir=cache, labels="breed")
    text = (
        (data / "labels.csv")
        .read_text()
        .replace("pics/ferret0.jpg,ferret", "pics/ferret0.jpg,stoat")
    )
    (data / "labels.csv").write_text(text)
    (data / "pics" / "stoat1.jpg").write_bytes((data / "pics" / "ferret1.jpg").read_bytes())
    second = load_arrays(data, SIZE, cache_dir=cache, labels="breed")
    assert "stoat" in second.classes.names and "stoat" not in first.classes.names


def test_rows_whose_split_is_unsaid_are_trained_on_beside_the_valid_ones(tmp_path):
    names = [f"{kind}{n}.jpg" for kind in ("rabbit", "hamster") for n in range(3)]
    splits = ["valid", "", ""] * 2  # a manifest that names only its validation photos
    rows = [
        f"{name},{name[:-5]},4,4,30,30,{split}" for name, split in zip(names, splits, strict=True)
    ]
    manifest(tmp_path, rows, "path,label,x1,y1,x2,y2,split", names)
    train, val = split_train_val(load_arrays(tmp_path, SIZE, cache_dir=None), 0.5, seed=0)
    assert sorted(Path(p).name for p in val.paths) == ["hamster0.jpg", "rabbit0.jpg"]
    assert len(train) == 4


def test_a_model_of_a_manifest_s_species_is_scored_on_them_and_one_class_folders_score(tmp_path):
    """A model trained on a manifest's species column (rodent / lagomorph) reads the photos'
    species again, not their labels; a folder of one of its classes is scored, not refused."""
    from petloc.model import Hyperparameters, build_model
    from petloc.training.evaluate import evaluate_dataset

    names = [f"{kind}{n}.jpg" for kind in ("rabbit", "hamster") for n in range(3)]
    rows = [
        f"{name},{name[:-5]},4,4,30,30,{'lagomorph' if name.startswith('rabbit') else 'rodent'}"
        for name in names
    ]
    manifest(tmp_path / "both", rows, "path,label,x1,y1,x2,y2,species", names)
    manifest(tmp_path / "one", rows[:3], "path,label,x1,y1,x2,y2,species", names[:3])
    classes = Classes(("lagomorph", "rodent"))
    model = build_model(Hyperparameters(width=0.25, head_units=8), SIZE, classes=classes)
    figures, _ = evaluate_dataset(model, tmp_path / "both")
    assert figures["images"] == 6 and figures["classes"] == 2
    figures, _ = evaluate_dataset(model, tmp_path / "one")
    assert figures["images"] == 3
