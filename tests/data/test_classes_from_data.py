"""A dataset's classes come from its photos: species by default (cat = 0, dog = 1), breeds
from cats_dogs file names or Oxford's list files, kept in the cache, split by class."""

from __future__ import annotations

import json

import numpy as np
import pytest

from petloc.config import DataConfig
from petloc.data.check import check_dataset, format_report
from petloc.data.classes import SPECIES, Classes
from petloc.data.pipeline import load_arrays, split_train_val
from petloc.errors import PetlocError
from petloc.training.dataset import prepare_data
from tests.data.test_readers import items, make_oxford, voc_xml, write_pair
from tests.helpers import encode, invoke, photo

SIZE = 32
# two cat breeds (capitalised) and two dog breeds, four photos each
BREEDS = {"Abyssinian": 1, "Bengal": 1, "great_pyrenees": 2, "pug": 2}


def breed_folder(root, per_breed: int = 4):
    for breed, class_id in BREEDS.items():
        for n in range(1, per_breed + 1):
            write_pair(root, f"{breed}_{n}", f"{class_id} 4 4 30 30")
    return root


def test_breed_labels_come_from_the_file_names_with_the_species_from_the_annotation(tmp_path):
    write_pair(tmp_path, "Abyssinian_12", "1 4 4 30 30")
    write_pair(tmp_path, "great_pyrenees_157", "2 4 4 30 30")
    write_pair(tmp_path, "portrait", "2 4 4 30 30")
    good, skipped = items(tmp_path, labels="breed")
    assert [(s.label, s.species) for s, _ in good] == [
        ("Abyssinian", "cat"),
        ("great_pyrenees", "dog"),
    ]
    assert [(s.path.name, s.reason) for s in skipped] == [
        (
            "portrait.jpg",
            "the file name is not BREED_NUMBER (labels=breed takes the breed from it)",
        )
    ]


def test_breed_classes_are_sorted_names_each_with_its_species(tmp_path):
    arrays = load_arrays(breed_folder(tmp_path), SIZE, cache_dir=None, labels="breed")
    assert arrays.classes == Classes(
        ("Abyssinian", "Bengal", "great_pyrenees", "pug"), ("cat", "cat", "dog", "dog")
    )
    by_path = dict(zip(arrays.paths, arrays.labels.tolist(), strict=True))
    assert by_path[str(tmp_path / "pug_3.jpg")] == 3
    assert by_path[str(tmp_path / "Bengal_1.jpg")] == 1


def test_the_species_default_is_unchanged_cat_0_dog_1(tmp_path):
    arrays = load_arrays(breed_folder(tmp_path), SIZE, cache_dir=None)
    assert arrays.classes == SPECIES
    by_path = dict(zip(arrays.paths, arrays.labels.tolist(), strict=True))
    assert by_path[str(tmp_path / "Abyssinian_1.jpg")] == 0
    assert by_path[str(tmp_path / "pug_1.jpg")] == 1


def test_a_dog_only_folder_keeps_the_species_classes(tmp_path):
    write_pair(tmp_path, "pug_1", "2 4 4 30 30")
    arrays = load_arrays(tmp_path, SIZE, cache_dir=None)
    assert arrays.classes == SPECIES and arrays.labels.tolist() == [1]


def test_a_breed_said_to_be_two_species_is_skipped_naming_the_first_photo(tmp_path):
    write_pair(tmp_path, "pug_1", "2 4 4 30 30")
    write_pair(tmp_path, "pug_2", "1 4 4 30 30")
    _, skipped = items(tmp_path, labels="breed")
    assert [str(s) for s in skipped] == [
        f"{tmp_path / 'pug_2.jpg'}: class 'pug' is species cat here but dog in {tmp_path / 'pug_1.jpg'}"
    ]


def test_the_cache_keeps_the_classes_and_keeps_species_and_breed_apart(tmp_path):
    data, cache = breed_folder(tmp_path / "photos"), tmp_path / "cache"
    breeds = load_arrays(data, SIZE, cache_dir=cache, labels="breed")
    species = load_arrays(data, SIZE, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 2
    again = load_arrays(data, SIZE, cache_dir=cache, labels="breed")
    assert again.classes == breeds.classes and len(breeds.classes) == 4
    assert np.array_equal(again.labels, breeds.labels)
    assert load_arrays(data, SIZE, cache_dir=cache).classes == species.classes == SPECIES


def test_prepare_data_labels_by_the_config_and_names_its_validation_data(tmp_path):
    data = breed_folder(tmp_path / "photos")
    cfg = DataConfig(path=str(data), image_size=SIZE, val_split=0.5, labels="breed")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)  # the cache goes under data/.cache here
        prepared = prepare_data(cfg, say=lambda _: None)
        species = prepare_data(cfg.model_copy(update={"labels": "species"}), say=lambda _: None)
    assert len(prepared.train.classes) == len(prepared.val.classes) == 4
    assert prepared.val_key != species.val_key and species.val_key.endswith("/seed0")


def test_the_split_is_stratified_by_class(tmp_path):
    arrays = load_arrays(breed_folder(tmp_path), SIZE, cache_dir=None, labels="breed")
    train, val = split_train_val(arrays, 0.5, seed=0)
    assert np.bincount(val.labels).tolist() == np.bincount(train.labels).tolist() == [2, 2, 2, 2]


def test_a_class_too_small_to_split_is_one_line_naming_it_its_count_and_the_folder(tmp_path):
    breed_folder(tmp_path)
    write_pair(tmp_path, "Sphynx_1", "1 4 4 30 30")
    arrays = load_arrays(tmp_path, SIZE, cache_dir=None, labels="breed")
    with pytest.raises(PetlocError) as err:
        split_train_val(arrays, 0.5, seed=0)
    assert str(err.value) == (
        f"{tmp_path}: class 'Sphynx' has 1 photo(s) outside the test split, "
        "too few to split into train and validation (2 at least)"
    )


def test_relabelled_maps_onto_a_models_classes_by_name(tmp_path):
    arrays = load_arrays(breed_folder(tmp_path), SIZE, cache_dir=None, labels="breed")
    model = Classes.from_names(["Abyssinian", "Bengal", "Sphynx", "great_pyrenees", "pug"])
    mapped = arrays.relabelled(model)
    assert mapped.classes == model
    assert [model.names[i] for i in mapped.labels] == [
        arrays.classes.names[i] for i in arrays.labels
    ]


def test_relabelled_onto_a_model_without_the_class_is_one_line_naming_the_first_photo(tmp_path):
    arrays = load_arrays(breed_folder(tmp_path), SIZE, cache_dir=None, labels="breed")
    with pytest.raises(PetlocError) as err:
        arrays.relabelled(Classes.from_names(["Abyssinian", "Bengal", "pug"]))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'great_pyrenees_1.jpg'}: class 'great_pyrenees'")
    assert "\n" not in message


# ---- Oxford ------------------------------------------------------------------------------


def test_oxford_breeds_come_from_its_list_file_with_their_species(tmp_path):
    make_oxford(tmp_path)
    (tmp_path / "annotations" / "list.txt").write_text(
        "#Image CLASS-ID SPECIES BREED-ID\nBengal_1 6 1 2\nboxer_2 4 2 1\nboxer_3 4 2 1\n"
        "american_pit_bull_terrier_9 3 2 2\n"
    )
    (tmp_path / "images" / "american_pit_bull_terrier_9.jpg").write_bytes(encode(photo(9)))
    (tmp_path / "annotations" / "xmls" / "american_pit_bull_terrier_9.xml").write_text(
        voc_xml("dog", (1, 1, 30, 30))
    )
    good, _ = items(tmp_path, labels="breed")
    assert [(s.path.name, s.label, s.species, s.split) for s, _ in good] == [
        ("Bengal_1.jpg", "Bengal", "cat", "train"),
        ("american_pit_bull_terrier_9.jpg", "american_pit_bull_terrier", "dog", None),
        ("boxer_2.jpg", "boxer", "dog", "test"),
    ]
    species, _ = items(tmp_path)
    assert [(s.label, s.species) for s, _ in species] == [
        ("cat", None),
        ("dog", None),
        ("dog", None),
    ]


def test_an_oxford_photo_no_list_file_names_has_no_breed(tmp_path):
    make_oxford(tmp_path)
    (tmp_path / "annotations" / "test.txt").unlink()
    _, skipped = items(tmp_path, labels="breed")
    assert "no list file names boxer_2: its breed is unknown" in [s.reason for s in skipped]


# ---- data check --------------------------------------------------------------------------


def test_check_counts_every_breed_per_split_in_a_row_per_class(tmp_path):
    breed_folder(tmp_path / "train", per_breed=3)
    breed_folder(tmp_path / "valid", per_breed=1)
    report = check_dataset(tmp_path, labels="breed")
    assert report.counts["valid"] == dict.fromkeys(sorted(BREEDS), 1)
    assert report.species == {
        "Abyssinian": "cat",
        "Bengal": "cat",
        "great_pyrenees": "dog",
        "pug": "dog",
    }
    lines = [line.split() for line in format_report(report).splitlines()]
    assert ["class", "species", "train", "valid", "total"] in lines
    assert ["great_pyrenees", "dog", "3", "1", "4"] in lines
    assert ["total", "12", "4", "16"] in lines


def test_data_check_labels_option_and_json_list_the_classes(tmp_path):
    breed_folder(tmp_path)
    result = invoke("data", "check", tmp_path, "--json", "--labels", "breed")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["classes"] == ["Abyssinian", "Bengal", "great_pyrenees", "pug"]
    assert report["counts"]["all"]["pug"] == 4 and report["labels"] == "breed"
    species = json.loads(invoke("data", "check", tmp_path, "--json").stdout)
    assert species["counts"] == {"all": {"cat": 8, "dog": 8}}
