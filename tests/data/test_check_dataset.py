"""`check_dataset`: counts per split and class, box and size statistics, skipped files."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from petloc.data.check import Spread, check_dataset, format_report
from petloc.errors import PetlocError


def write_pair(folder, name: str, line: str, size=(64, 48)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size[1], size[0], 3), 120, np.uint8)
    (folder / f"{name}.jpg").write_bytes(cv2.imencode(".jpg", pixels)[1].tobytes())
    (folder / f"{name}.txt").write_text(line)


@pytest.fixture
def dataset(tmp_path):
    """train: 2 cats + 1 dog + 1 bad class; valid: 1 dog. Box fractions chosen to be exact."""
    write_pair(tmp_path / "train", "cat_a", "1 0 0 32 24")  # 0.5 x 0.5 of 64x48
    write_pair(tmp_path / "train", "cat_b", "1 0 0 16 12")  # 0.25 x 0.25
    write_pair(tmp_path / "train", "dog_c", "2 0 0 64 48")  # whole image
    write_pair(tmp_path / "train", "odd_d", "3 0 0 10 10")
    write_pair(tmp_path / "valid", "dog_e", "2 0 0 100 50", size=(200, 100))  # 0.5 x 0.5
    return tmp_path


def test_counts_per_split_and_class_and_the_skipped_file(dataset):
    report = check_dataset(dataset)
    assert report.layout == "cats_dogs"
    assert report.counts == {"train": {"cat": 2, "dog": 1}, "valid": {"cat": 0, "dog": 1}}
    assert report.usable == 4
    assert [(s.path.name, s.reason) for s in report.skipped] == [
        ("odd_d.jpg", "odd_d.txt: class 3 is not 1 (cat) or 2 (dog)")
    ]


def test_box_and_image_size_statistics(dataset):
    report = check_dataset(dataset)
    assert report.box_width == Spread(0.25, 0.5, 1.0)
    assert report.box_height == Spread(0.25, 0.5, 1.0)
    assert report.box_area == Spread(0.0625, 0.25, 1.0)
    assert report.image_width == Spread(64, 64, 200)
    assert report.image_height == Spread(48, 48, 100)


def test_to_dict_is_json_with_every_skipped_file(dataset):
    data = json.loads(json.dumps(check_dataset(dataset).to_dict()))
    assert data["counts"]["train"] == {"cat": 2, "dog": 1}
    assert data["usable"] == 4
    assert data["box_area"] == {"min": 0.0625, "median": 0.25, "max": 1.0}
    assert data["skipped"] == [
        {
            "path": str(dataset / "train" / "odd_d.jpg"),
            "reason": "odd_d.txt: class 3 is not 1 (cat) or 2 (dog)",
        }
    ]


def test_format_report_shows_the_counts_table_stats_and_reasons(dataset):
    text = format_report(check_dataset(dataset))
    lines = text.splitlines()
    assert lines[0] == f"{dataset}  (layout cats_dogs): 4 usable, 1 skipped"
    assert ["split", "cat", "dog", "total"] in [line.split() for line in lines]
    assert ["train", "2", "1", "3"] in [line.split() for line in lines]
    assert ["total", "2", "2", "4"] in [line.split() for line in lines]
    assert ["box", "area", "/", "image", "0.0625", "0.25", "1"] in [line.split() for line in lines]
    assert (
        f"  {dataset / 'train' / 'odd_d.jpg'}: odd_d.txt: class 3 is not 1 (cat) or 2 (dog)"
        in lines
    )


def test_on_bad_fail_raises_on_the_first_problem(dataset):
    with pytest.raises(PetlocError, match=r"odd_d\.jpg: odd_d\.txt: class 3 is not 1"):
        check_dataset(dataset, on_bad="fail")


def test_a_dataset_with_nothing_usable_reports_no_statistics(tmp_path):
    write_pair(tmp_path, "odd", "3 0 0 10 10")
    report = check_dataset(tmp_path)
    assert (report.usable, report.box_area, report.image_width, len(report.skipped)) == (
        0,
        None,
        None,
        1,
    )
    assert "1 skipped" in format_report(report)
