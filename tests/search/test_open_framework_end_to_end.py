"""The framework opened, end to end: a breed sweep on a team's own plug-in backbone, started
from Python and from the command line, and its champion pulled by name answers with breed
names (and the species of the breed)."""

from __future__ import annotations

import json

import cv2
import pytest
import yaml

import petloc
from tests.helpers import (
    TINY_BREEDS,
    forgetting_plugins,
    in_project,
    invoke,
    tiny_breed_dataset,
    tiny_experiment,
    write_plugin,
)

BREEDS = {breed for breeds in TINY_BREEDS.values() for breed in breeds}
MODULE, NAME = "team_nets", "teamnet"


def breed_sweep_file(root):
    """A two-trial breed sweep over petloc's `simple` and the plug-in's backbone."""
    write_plugin(root, MODULE, NAME, custom_layer=True)
    exp = tiny_experiment(
        root, tiny_breed_dataset(root / "photos", count=48), registry={"name": "team-breeds"}
    )
    body = yaml.safe_load(exp.read_text())
    body["data"]["labels"] = "breed"
    body["plugins"] = [MODULE]
    body["space"]["backbone"] = [NAME, "simple"]
    body["tuner"] = {"kind": "grid", "max_trials": 2, "seed": 0}
    exp.write_text(yaml.safe_dump(body, sort_keys=False))
    return exp


@pytest.mark.slow  # two sweeps of two trials
def test_a_breed_sweep_on_a_plugin_backbone_from_python_and_from_the_cli(tmp_path):
    for way, root in (("python", tmp_path / "py"), ("cli", tmp_path / "cli")):
        root.mkdir()
        with in_project(root), forgetting_plugins(root):
            exp = breed_sweep_file(root)
            if way == "python":
                result = petloc.sweep(exp, say=None)
                board, champion = result.leaderboard, result.champion
                assert set(board["backbone"]) == {NAME, "simple"}, board
                assert champion is not None
                image = cv2.cvtColor(
                    cv2.imread(str(next((root / "photos").glob("*.jpg")))), cv2.COLOR_BGR2RGB
                )
                [answer] = petloc.load_model(champion).predict([image])
                assert answer.label in BREEDS, answer
            else:
                done = invoke("sweep", exp)
                assert done.exit_code == 0, done.output
                assert "team-breeds@champion" in done.output
            # pulled by name, it answers with a breed, as the CLI does
            photo = next((root / "photos").glob("*.jpg"))
            done = invoke("predict", "team-breeds@champion", photo, "--json")
            assert done.exit_code == 0, done.output
            answer = json.loads(done.output.strip().splitlines()[-1])
            assert answer["label"] in BREEDS, answer
            assert len(answer["box"]) == 4
