"""`pretrain:` takes its hyperparameters' types, bounds and choices from petloc.hyperparams: the
two cannot drift apart."""

import pytest

from petloc import hyperparams
from petloc.config import PretrainConfig, parse_experiment
from petloc.errors import PetlocError

SHARED = [name for name in PretrainConfig.model_fields if name in hyperparams.DECLARED]
JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def schema_of(name: str) -> dict:
    """The field's JSON schema without its None branch (image_size: None = data.image_size)."""
    schema = PretrainConfig.model_json_schema()["properties"][name]
    branches = [b for b in schema.get("anyOf", [schema]) if b.get("type") != "null"]
    assert len(branches) == 1, schema
    return branches[0]


def test_pretrain_shares_the_localiser_s_hyperparameters():
    assert {
        "backbone",
        "width",
        "aug_strength",
        "dropout",
        "learning_rate",
        "batch_size",
        "image_size",
    } <= set(SHARED)


@pytest.mark.parametrize("name", SHARED)
def test_a_shared_field_has_the_declared_type_and_bounds(name):
    schema = schema_of(name)
    assert schema["type"] == JSON_TYPES[hyperparams.kind(name)]
    bounds = hyperparams.bounds(name)
    assert (schema.get("minimum"), schema.get("maximum")) == (bounds or (None, None))
    nullable = "anyOf" in PretrainConfig.model_json_schema()["properties"][name]
    assert nullable == (hyperparams.default(name) is None)


@pytest.mark.parametrize("name", SHARED)
def test_a_shared_field_refuses_what_the_declaration_refuses(name):
    bounds, choices = hyperparams.bounds(name), hyperparams.choices(name)
    refused = (
        (
            [bounds[0] - 1, bounds[1] + 1]
            if hyperparams.kind(name) is int
            else [bounds[0] - 0.01, bounds[1] * 1.01 + 0.01]
        )
        if bounds
        else ["no-such-choice"]
        if choices
        else []
    )
    for value in refused:
        with pytest.raises(PetlocError, match=f"pretrain.{name}: "):
            parse_experiment({"pretrain": {name: value}})
    for value in [*(bounds or ()), *(choices or ())]:
        assert getattr(parse_experiment({"pretrain": {name: value}}).pretrain, name) == value


@pytest.mark.parametrize("name", SHARED)
def test_pretraining_s_default_is_a_value_the_declaration_allows(name):
    value = PretrainConfig.model_fields[name].default
    if value is None:
        assert hyperparams.default(name) is None
        return
    bounds, choices = hyperparams.bounds(name), hyperparams.choices(name)
    assert isinstance(value, hyperparams.kind(name))
    assert (bounds is None or bounds[0] <= value <= bounds[1]) and (
        choices is None or value in choices
    )
