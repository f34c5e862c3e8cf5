"""Image decoding and dataset readers: what loads, what is skipped and why."""

from __future__ import annotations

import io
import json
import re

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from petloc.data import readers
from petloc.data.images import BadImage, decode_image, decode_rgb, header_size, read_image, read_rgb
from petloc.data.readers import OVERSHOOT_TOLERANCE_PX, checked_box, detect_layout, scan
from petloc.data.records import Sample, Skipped
from petloc.errors import PetlocError
from tests.helpers import (
    blank_png,
    encode,
    invoke,
    jpeg_with_orientation,
    marked_photo,
    photo,
    with_extraneous_bytes,
)

W, H = 64, 48


def scan_data_span(jpeg: bytes) -> tuple[int, int]:
    """Start and end offsets of the entropy-coded data of a one-scan JPEG."""
    sos = jpeg.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(jpeg[sos + 2 : sos + 4], "big"), len(jpeg) - 2


def corrupt_scan_data(jpeg: bytes) -> bytes:
    """The middle third of the scan data replaced by random bytes (no 0xFF: no fake markers)."""
    start, end = scan_data_span(jpeg)
    a, b = start + (end - start) // 3, start + 2 * (end - start) // 3
    garbage = np.random.default_rng(7).integers(0, 255, b - a, dtype=np.uint8).tobytes()
    return jpeg[:a] + garbage + jpeg[b:]


def write_pair(folder, name, line, image: bytes | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.jpg").write_bytes(image if image is not None else encode(photo(len(name))))
    if line is not None:
        (folder / f"{name}.txt").write_text(line)


def items(root, **kwargs) -> tuple[list[tuple[Sample, np.ndarray | None]], list[Skipped]]:
    found = list(scan(root, **kwargs))
    return [i for i in found if not isinstance(i, Skipped)], [
        i for i in found if isinstance(i, Skipped)
    ]


# ---- images ---------------------------------------------------------------------------


def test_jpeg_decodes_to_rgb_in_the_right_channel_order(tmp_path):
    red = np.zeros((H, W, 3), np.uint8)
    red[..., 0] = 255
    (tmp_path / "red.jpg").write_bytes(encode(red))
    pixels = read_rgb(tmp_path / "red.jpg")
    assert pixels.shape == (H, W, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels[H // 2, W // 2].astype(int) - [255, 0, 0]).max() <= 3


@pytest.mark.parametrize("name", ["my cat.jpg", "chat_été_猫.jpg", "dog (1).jpeg"])
def test_file_names_with_spaces_and_non_ascii_letters_load(tmp_path, name):
    (tmp_path / name).write_bytes(encode(photo()))
    assert read_rgb(tmp_path / name).shape == (H, W, 3)


def test_png_named_jpg_loads_by_content(tmp_path):
    rgb = photo()
    (tmp_path / "really_a_png.jpg").write_bytes(encode(rgb, ".png"))
    np.testing.assert_array_equal(read_rgb(tmp_path / "really_a_png.jpg"), rgb)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_grayscale_gives_three_equal_channels(tmp_path, ext):
    gray = cv2.cvtColor(photo(), cv2.COLOR_RGB2GRAY)
    (tmp_path / f"gray{ext}").write_bytes(encode(gray, ext))
    pixels = read_rgb(tmp_path / f"gray{ext}")
    assert pixels.shape == (H, W, 3)
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path):
    deep = photo().astype(np.uint16) * 257
    (tmp_path / "deep.png").write_bytes(encode(deep, ".png"))
    np.testing.assert_array_equal(read_rgb(tmp_path / "deep.png"), photo())


def test_rgba_png_is_composited_on_white(tmp_path):
    bgra = np.zeros((H, W, 4), np.uint8)
    bgra[..., 2] = 255  # red everywhere underneath
    bgra[:, : W // 2, 3] = 255  # left half opaque, right half fully transparent
    (tmp_path / "cutout.png").write_bytes(encode(bgra, ".png"))
    pixels = read_rgb(tmp_path / "cutout.png")
    assert pixels.shape == (H, W, 3)
    assert pixels[0, 0].tolist() == [255, 0, 0]
    assert pixels[0, -1].tolist() == [255, 255, 255]


def test_cmyk_jpeg_loads_with_its_colours(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, : W // 2] = (200, 30, 30)
    rgb[:, W // 2 :] = (20, 40, 230)
    buffer = io.BytesIO()
    image_module.fromarray(rgb).convert("CMYK").save(buffer, "JPEG", quality=95)
    (tmp_path / "print.jpg").write_bytes(buffer.getvalue())
    pixels = read_rgb(tmp_path / "print.jpg")
    assert pixels.shape == (H, W, 3)
    assert np.abs(pixels[H // 2, [8, -8]].astype(int) - [[200, 30, 30], [20, 40, 230]]).max() <= 4


@pytest.mark.parametrize(
    "options", [(), (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), (cv2.IMWRITE_JPEG_RST_INTERVAL, 2)]
)
def test_progressive_and_restart_marker_jpegs_load(tmp_path, options):
    (tmp_path / "a.jpg").write_bytes(encode(photo(), ".jpg", *options))
    assert read_rgb(tmp_path / "a.jpg").shape == (H, W, 3)


def with_app_segment(jpeg: bytes, payload: bytes) -> bytes:
    """An APP1 segment (like EXIF with a thumbnail) inserted after SOI."""
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def test_end_marker_inside_a_metadata_segment_is_not_the_end_of_the_image(tmp_path):
    thumbnail_like = b"Exif\x00\x00\xff\xd8\xff\xd9"
    good = with_app_segment(encode(photo()), thumbnail_like)
    (tmp_path / "good.jpg").write_bytes(good)
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) // 2])
    assert read_rgb(tmp_path / "good.jpg").shape == (H, W, 3)
    with pytest.raises(BadImage, match="truncated JPEG: no end-of-image marker"):
        read_rgb(tmp_path / "cut.jpg")


GOOD_JPEG = encode(photo())
BAD_IMAGES = {
    "empty.jpg": (b"", "empty file"),
    "notes.jpg": (b"this is a text file, not a photo\n", r"not an image \(unknown file format\)"),
    "cut.jpg": (
        GOOD_JPEG[: len(GOOD_JPEG) * 2 // 3],
        r"truncated JPEG: no end-of-image marker \(FFD9\)",
    ),
    "scrambled.jpg": (corrupt_scan_data(GOOD_JPEG), r"corrupt JPEG data \("),
    "broken.png": (encode(photo(), ".png")[:200], "damaged PNG file"),
}


@pytest.mark.parametrize("name", BAD_IMAGES)
def test_damaged_files_raise_bad_image_with_a_one_line_reason(tmp_path, name):
    data, reason = BAD_IMAGES[name]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(BadImage, match=reason) as err:
        read_rgb(tmp_path / name)
    assert "\n" not in str(err.value)


def test_bytes_after_the_end_marker_are_a_complete_image(tmp_path):
    # Phones append trailers after FFD9; the real Egyptian_Mau_138.jpg ends with one stray byte.
    (tmp_path / "trailer.jpg").write_bytes(GOOD_JPEG + b"\r")
    assert read_rgb(tmp_path / "trailer.jpg").shape == (H, W, 3)


def test_missing_file_raises_bad_image(tmp_path):
    with pytest.raises(BadImage, match="cannot read file"):
        read_rgb(tmp_path / "nowhere.jpg")


def test_corrupt_jpeg_is_refused_without_libjpeg_noise_on_stderr(tmp_path, capfd):
    (tmp_path / "scrambled.jpg").write_bytes(corrupt_scan_data(GOOD_JPEG))
    with pytest.raises(BadImage):
        read_rgb(tmp_path / "scrambled.jpg")
    assert "Corrupt JPEG" not in capfd.readouterr().err


def test_extraneous_bytes_are_a_warning_when_lenient_and_refused_when_strict(tmp_path):
    (tmp_path / "padded.jpg").write_bytes(with_extraneous_bytes(GOOD_JPEG))
    image = read_image(tmp_path / "padded.jpg")
    # every viewer shows the whole photo
    np.testing.assert_array_equal(image.pixels, decode_rgb(GOOD_JPEG))
    [warning] = image.warnings
    assert re.fullmatch(
        r"the JPEG decoder skipped \d+ extraneous bytes before marker 0xd9; the image decoded in full",
        warning,
    )
    with pytest.raises(
        BadImage, match=r"corrupt JPEG data \(\d+ extraneous bytes before marker 0xd9\)"
    ):
        read_rgb(tmp_path / "padded.jpg")  # training data: strict by default


@pytest.mark.parametrize(
    "data, reason",
    [
        (GOOD_JPEG[: len(GOOD_JPEG) * 2 // 3], r"truncated JPEG: no end-of-image marker"),
        (
            GOOD_JPEG[: len(GOOD_JPEG) * 2 // 3] + b"\xff\xd9",
            r"corrupt JPEG data \(premature end of data segment\)",
        ),
    ],
)
def test_truncated_jpegs_stay_errors_when_lenient(data, reason):
    with pytest.raises(BadImage, match=reason):
        decode_image(data)


def test_a_phone_photo_is_read_upright_as_a_viewer_shows_it(tmp_path):
    # turned 90 degrees clockwise
    (tmp_path / "phone.jpg").write_bytes(jpeg_with_orientation(marked_photo(), 6))
    pixels = read_rgb(tmp_path / "phone.jpg")
    assert pixels.shape == (W, H, 3)  # portrait
    assert header_size(tmp_path / "phone.jpg") == (H, W)
    # the marker is now top right
    assert (pixels[:12, -8:, 0] > 200).all() and (pixels[:12, -8:, 1] < 60).all()
    assert (pixels[-12:, :8, 0] < 160).all()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillows_exif_transpose(orientation):
    from PIL import Image, ImageOps

    data = jpeg_with_orientation(marked_photo(), orientation)
    expected = np.asarray(
        ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    ).astype(int)
    assert np.abs(decode_rgb(data).astype(int) - expected).max() <= 3  # two JPEG decoders' rounding


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    # 390 kB that decode to 400 MB, 1.2 GB in RGB
    (tmp_path / "bomb.png").write_bytes(blank_png(20000, 20000))
    reason = (
        r"image is 400000000 pixels, over the limit of 50000000 pixels \(PETLOC_MAX_IMAGE_PIXELS\)"
    )
    with pytest.raises(BadImage, match=reason):
        read_rgb(tmp_path / "bomb.png")
    with pytest.raises(BadImage, match=reason):
        header_size(tmp_path / "bomb.png")


def test_the_pixel_limit_is_a_setting(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(encode(photo(), ".png"))
    monkeypatch.setenv("PETLOC_MAX_IMAGE_PIXELS", "3000")
    with pytest.raises(
        BadImage,
        match=r"image is 64x48 pixels, over the limit of 3000 pixels \(PETLOC_MAX_IMAGE_PIXELS\)",
    ):
        read_image(tmp_path / "a.png")
    monkeypatch.setenv("PETLOC_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(
        PetlocError,
        match="PETLOC_MAX_IMAGE_PIXELS=lots: expected a whole number above 0, at most 2147483647",
    ):
        read_image(tmp_path / "a.png")


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_decoding_with_max_side_shrinks_but_keeps_the_original_size(ext):
    big = cv2.resize(photo(), (640, 480))
    image = decode_image(encode(big, ext), max_side=100)
    assert image.pixels.shape == (75, 100, 3) and (image.width, image.height) == (640, 480)
    assert (
        np.abs(
            image.pixels.astype(int) - cv2.resize(big, (100, 75), interpolation=cv2.INTER_AREA)
        ).mean()
        < 3
    )


# ---- cats_dogs layout -----------------------------------------------------------------


def test_cats_dogs_pairs_become_samples_with_model_labels_and_pixels(tmp_path):
    write_pair(tmp_path, "Abyssinian_1", "1 10 5 40 30\n")
    write_pair(tmp_path, "beagle_2", "2 0 0 64 48")
    good, skipped = items(tmp_path)
    assert skipped == []
    (cat, cat_pixels), (dog, _) = good
    assert (cat.path.name, cat.label, cat.box, cat.width, cat.height, cat.split) == (
        "Abyssinian_1.jpg",
        "cat",
        (10, 5, 40, 30),
        W,
        H,
        None,
    )
    assert dog.label == "dog" and dog.box == (0, 0, 64, 48)
    assert cat_pixels.shape == (H, W, 3)


@pytest.mark.parametrize("decode", [True, False])
def test_boxes_of_a_phone_photo_are_checked_in_its_upright_frame(tmp_path, decode):
    # fits 48x64, not 64x48
    write_pair(tmp_path, "portrait", "1 2 40 46 62", jpeg_with_orientation(marked_photo(), 6))
    [(sample, pixels)], skipped = items(tmp_path, decode=decode)
    assert skipped == [] and (sample.width, sample.height, sample.box) == (H, W, (2, 40, 46, 62))
    assert pixels is None or pixels.shape == (W, H, 3)


def test_train_valid_test_subfolders_set_the_split(tmp_path):
    for split in ("train", "valid", "test"):
        write_pair(tmp_path / split, f"pet_{split}", "2 1 1 20 20")
    write_pair(tmp_path, "stray", "1 1 1 20 20")
    good, skipped = items(tmp_path)
    assert [(s.path.parent.name, s.split) for s, _ in good] == [
        ("train", "train"),
        ("valid", "valid"),
        ("test", "test"),
    ]
    assert [(s.path.name, s.reason) for s in skipped] == [
        ("stray.jpg", "outside the train/, valid/ and test/ folders: not used")
    ]


def test_image_suffixes_are_matched_in_any_case_and_in_sorted_order(tmp_path):
    (tmp_path / "b.JPG").write_bytes(encode(photo()))
    (tmp_path / "b.txt").write_text("1 1 1 9 9")
    (tmp_path / "a.png").write_bytes(encode(photo(), ".png"))
    (tmp_path / "a.TXT").write_text("2 1 1 9 9")
    good, _ = items(tmp_path)
    assert [s.path.name for s, _ in good] == ["a.png", "b.JPG"]


BAD_ANNOTATIONS = {
    "no_txt": (None, "no annotation file no_txt.txt"),
    "empty": ("", "empty.txt: empty annotation file"),
    "blank": ("  \n\n", "blank.txt: empty annotation file"),
    "short": ("1 10 5 40", "short.txt: expected 'CLASS x1 y1 x2 y2' with numbers, got '1 10 5 40'"),
    "words": ("cat 10 5 40 30", "words.txt: expected 'CLASS x1 y1 x2 y2' with numbers"),
    "two_lines": ("1 1 1 9 9\n2 1 1 9 9\n", "two_lines.txt: 2 lines, expected one"),
    "class3": ("3 10 5 40 30", "class3.txt: class 3 is not 1 (cat) or 2 (dog)"),
    "inverted": ("1 10 5 3 40", "box (10, 5, 3, 40) is inverted"),
    "flat": ("1 10 5 10 40", "box (10, 5, 10, 40) has zero area"),
    "outside": ("2 10 5 70 40", "box (10, 5, 70, 40) lies outside the 64x48 image by 6 px"),
    "nan": ("2 nan 5 30 40", "box (nan, 5, 30, 40) has a coordinate that is not a number"),
}


def test_each_bad_annotation_is_skipped_with_a_reason_naming_the_problem(tmp_path):
    for name, (line, _) in BAD_ANNOTATIONS.items():
        write_pair(tmp_path, name, line)
    write_pair(tmp_path, "zz_good", "1 1 1 30 30")
    good, skipped = items(tmp_path)
    assert [s.path.name for s, _ in good] == ["zz_good.jpg"]
    reasons = {s.path.stem: s.reason for s in skipped}
    assert set(reasons) == set(BAD_ANNOTATIONS)
    for name, (_, expected) in BAD_ANNOTATIONS.items():
        assert reasons[name].startswith(expected), (name, reasons[name])
        assert "\n" not in reasons[name]


def test_annotation_without_image_is_reported(tmp_path):
    write_pair(tmp_path, "good", "1 1 1 30 30")
    (tmp_path / "orphan.txt").write_text("1 1 1 30 30")
    _, skipped = items(tmp_path)
    assert [(s.path.name, s.reason) for s in skipped] == [
        ("orphan.txt", "annotation without an image")
    ]


def test_box_overshooting_by_rounding_is_clipped_and_beyond_that_skipped(tmp_path):
    write_pair(tmp_path, "a_rounded", "1 -1 0 65.5 48")
    write_pair(tmp_path, "b_too_far", "1 0 0 67 48")
    good, skipped = items(tmp_path)
    assert [s.box for s, _ in good] == [(0, 0, W, H)]
    assert [s.path.name for s in skipped] == ["b_too_far.jpg"]


def test_damaged_images_in_a_dataset_are_skipped_with_distinct_reasons(tmp_path):
    write_pair(tmp_path, "cut", "1 1 1 30 30", GOOD_JPEG[:-300])
    write_pair(tmp_path, "scrambled", "1 1 1 30 30", corrupt_scan_data(GOOD_JPEG))
    write_pair(tmp_path, "trailer", "1 1 1 30 30", GOOD_JPEG + b"\r")
    write_pair(tmp_path, "zz_good", "1 1 1 30 30", GOOD_JPEG)
    good, skipped = items(tmp_path)
    assert len(good) == 2  # the trailer one is a whole image
    reasons = [s.reason for s in skipped]
    assert len(set(reasons)) == 2
    assert reasons[0].startswith("truncated JPEG") and reasons[1].startswith("corrupt JPEG data")


def test_on_bad_fail_raises_one_line_naming_the_file_and_reason(tmp_path):
    write_pair(tmp_path, "good", "1 1 1 30 30")
    write_pair(tmp_path, "wrong", "3 1 1 30 30")
    with pytest.raises(PetlocError) as err:
        list(scan(tmp_path, on_bad="fail"))
    assert (
        str(err.value) == f"{tmp_path / 'wrong.jpg'}: wrong.txt: class 3 is not 1 (cat) or 2 (dog)"
    )


def test_without_decoding_sizes_come_from_headers_and_no_pixels(tmp_path):
    write_pair(tmp_path, "a", "1 1 1 30 30")
    [(sample, pixels)] = items(tmp_path, decode=False)[0]
    assert (sample.width, sample.height, pixels) == (W, H, None)


def test_each_image_is_decoded_once(tmp_path, monkeypatch):
    for i in range(3):
        write_pair(tmp_path, f"pet{i}", "1 1 1 30 30")
    calls = []
    monkeypatch.setattr(readers, "read_rgb", lambda path, strict: calls.append(path) or photo())
    assert len(items(tmp_path)[0]) == 3
    assert len(calls) == 3 and len(set(calls)) == 3


@given(
    box=st.tuples(*[st.floats(-10, 80, allow_nan=False)] * 4),
)
def test_a_kept_box_always_lies_inside_the_image_with_positive_area(box):
    result = checked_box(Sample(readers.Path("x.jpg"), "cat", box, W, H))
    x1, y1, x2, y2 = box
    fits = 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H
    if fits:
        assert result.box == box
    if isinstance(result, Sample):
        bx1, by1, bx2, by2 = result.box
        assert 0 <= bx1 < bx2 <= W and 0 <= by1 < by2 <= H
        assert (
            max(abs(a - b) for a, b in zip(result.box, box, strict=True)) <= OVERSHOOT_TOLERANCE_PX
        )


# ---- Oxford-IIIT Pet layout -----------------------------------------------------------


def voc_xml(name: str, box: tuple[int, int, int, int], size=(W, H)) -> str:
    xmin, ymin, xmax, ymax = box
    return (
        f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
        f"<object><name>{name}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object></annotation>"
    )


def make_oxford(root) -> None:
    (root / "images").mkdir(parents=True)
    xmls = root / "annotations" / "xmls"
    xmls.mkdir(parents=True)
    for i, name in enumerate(["Bengal_1", "boxer_2", "boxer_3", "pug_4", "Sphynx_5"]):
        (root / "images" / f"{name}.jpg").write_bytes(encode(photo(i)))
    (xmls / "Bengal_1.xml").write_text(voc_xml("cat", (1, 1, 64, 48)))
    (xmls / "boxer_2.xml").write_text(voc_xml("dog", (11, 6, 40, 30)))
    (xmls / "boxer_3.xml").write_text("<annotation><size><width>64</width>")
    (xmls / "pug_4.xml").write_text(voc_xml("dog", (1, 1, 10, 10), size=(500, 375)))
    (root / "annotations" / "trainval.txt").write_text(
        "#Image CLASS-ID SPECIES BREED-ID\nBengal_1 6 1 2\n"
    )
    (root / "annotations" / "test.txt").write_text("boxer_2 4 2 1\nboxer_3 4 2 1\n")


def test_oxford_layout_reads_head_boxes_with_voc_corners_converted(tmp_path):
    make_oxford(tmp_path)
    assert detect_layout(tmp_path) == "oxford"
    good, skipped = items(tmp_path)
    assert [(s.path.name, s.label, s.box, s.split) for s, _ in good] == [
        ("Bengal_1.jpg", "cat", (0, 0, 64, 48), "train"),  # VOC 1..64 inclusive = the whole width
        ("boxer_2.jpg", "dog", (10, 5, 40, 30), "test"),
    ]
    reasons = {s.path.name: s.reason for s in skipped}
    assert reasons["boxer_3.jpg"].startswith("boxer_3.xml: malformed XML")
    assert reasons["pug_4.jpg"] == "image is 64x48 but pug_4.xml says 500x375"
    assert "Sphynx_5.jpg" not in reasons  # no xml: no head box, not a problem


def test_oxford_xml_and_list_file_disagreeing_on_species_is_skipped(tmp_path):
    make_oxford(tmp_path)
    (tmp_path / "annotations" / "trainval.txt").write_text("Bengal_1 6 2 2\n")
    _, skipped = items(tmp_path)
    assert "Bengal_1.xml says cat, the list file says dog" in [s.reason for s in skipped]


# ---- layout detection -----------------------------------------------------------------


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p, "no such folder"),
        (lambda p: (p.write_text("x"), p)[1], "is a file, expected a dataset folder"),
        (lambda p: (p.mkdir(), (p / "a.jpg").write_bytes(b"x"), p)[2], "no dataset found"),
    ],
)
def test_detect_layout_errors_are_one_line_naming_the_path(tmp_path, make, reason):
    path = make(tmp_path / "my data")
    with pytest.raises(PetlocError) as err:
        detect_layout(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {reason}") and "\n" not in message


def test_scan_raises_layout_errors_before_iterating(tmp_path):
    with pytest.raises(PetlocError, match="no such folder"):
        scan(tmp_path / "missing")


def test_data_check_json_counts_the_usable_photos_and_names_each_skipped_file_and_reason(tmp_path):
    write_pair(tmp_path, "good", "1 1 1 30 30")
    write_pair(tmp_path, "wrong", "3 1 1 30 30")
    write_pair(tmp_path, "cut", "2 1 1 30 30", GOOD_JPEG[:-300])
    result = invoke("data", "check", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["layout"], report["usable"]) == ("cats_dogs", 1)
    assert report["skipped"] == [
        {
            "path": str(tmp_path / "cut.jpg"),
            "reason": "truncated JPEG: no end-of-image marker (FFD9)",
        },
        {
            "path": str(tmp_path / "wrong.jpg"),
            "reason": "wrong.txt: class 3 is not 1 (cat) or 2 (dog)",
        },
    ]
    with pytest.raises(PetlocError, match=r"cut\.jpg: truncated JPEG"):
        invoke("data", "check", tmp_path, "--json", "--on-bad", "fail")
