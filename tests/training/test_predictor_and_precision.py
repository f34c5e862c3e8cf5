"""The speed fixes of issue #15 keep their answers: Predictor's compiled call gives the
predictions `model.predict` gave, `predict` streams files in batches with every per-image
line and exit code kept, and `train.precision: auto` resolves by the CPU's bf16 units."""

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from petloc.cli import cli
from petloc.config import parse_experiment
from petloc.errors import PetlocError
from petloc.model import Hyperparameters, build_model
from petloc.training.fit import resolved_precision
from petloc.training.predict import Predictor, predict_files
from tests.helpers import in_project, tiny_dataset, tiny_experiment

SIZE = 32


def photo(seed: int = 0, w: int = 64, h: int = 48) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (5, 5), 2)


def encode(pixels: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    assert ok
    return buffer.tobytes()


@pytest.fixture(scope="module")
def model():
    return build_model(
        Hyperparameters(width=0.25, head_units=8, box_head="centre", tta="flip"), SIZE
    )


def test_predictor_answers_as_model_predict_did(model):
    # several sizes, batches of 2, 2, 1
    images = [photo(seed=i, w=40 + 7 * i, h=30 + 5 * i) for i in range(5)]
    resized = np.stack(
        [cv2.resize(im, (SIZE, SIZE), interpolation=cv2.INTER_AREA) for im in images]
    ).astype(np.float32)
    expected = model.predict(resized, verbose=0)
    preds = Predictor(model).predict(images, batch_size=2)
    assert len(preds) == 5
    for im, pred, p, b in zip(images, preds, expected["cls"], expected["box"], strict=True):
        h, w = im.shape[:2]
        assert pred.label == ("cat", "dog")[int(p.argmax())]
        assert pred.score == pytest.approx(float(p.max()), abs=1e-5)
        x1, x2 = sorted((b[0] * w, b[2] * w))
        y1, y2 = sorted((b[1] * h, b[3] * h))
        np.testing.assert_allclose(pred.box, (x1, y1, x2, y2), atol=1e-5 * max(w, h))


def test_predict_files_streams_in_batches_and_keeps_each_images_line(model, tmp_path):
    paths = []
    for i in range(7):
        path = tmp_path / f"p{i}.jpg"
        path.write_bytes(b"not an image" if i == 4 else encode(photo(seed=i)))
        paths.append(str(path))
    pulled = []

    def lazily():
        for path in paths:
            pulled.append(path)
            yield path

    rows = predict_files(Predictor(model), lazily(), batch_size=3)
    first = next(rows)
    assert len(pulled) == 3  # the first answer came before the rest of the files were read
    rows = [first, *rows]
    assert [r["image"] for r in rows] == paths
    assert "error" in rows[4] and all("label" in r for i, r in enumerate(rows) if i != 4)
    one_by_one = [row for path in paths for row in predict_files(Predictor(model), [path])]
    assert rows == one_by_one  # batching changes no answer


def test_predict_command_on_more_files_than_a_batch(model, tmp_path):
    model.save(tmp_path / "m.keras")
    paths = []
    for i in range(40):  # more than one batch of 32
        path = tmp_path / f"p{i:02d}.jpg"
        path.write_bytes(b"\xff\xd8\xff broken" if i == 33 else encode(photo(seed=i)))
        paths.append(str(path))
    result = CliRunner().invoke(
        cli, ["predict", str(tmp_path / "m.keras"), *paths, "--json"], catch_exceptions=False
    )
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [r["image"] for r in rows] == paths
    assert "error" in rows[33] and sum("error" in r for r in rows) == 1
    assert result.exit_code == 1
    good = CliRunner().invoke(
        cli, ["predict", str(tmp_path / "m.keras"), *paths[:33]], catch_exceptions=False
    )
    assert good.exit_code == 0 and len(good.stdout.strip().splitlines()) == 33


def test_precision_auto_is_the_default_and_resolves_by_the_cpus_bf16_units(tmp_path):
    assert parse_experiment({"name": "x"}).train.precision == "auto"
    for value in ("float32", "mixed_bfloat16"):
        assert (
            parse_experiment({"name": "x", "train": {"precision": value}}).train.precision == value
        )
        # an explicit choice is kept whatever the CPU and size
        assert resolved_precision(value, 64) == value
    with pytest.raises(PetlocError, match=r"train\.precision"):
        from petloc.config import load_experiment

        (tmp_path / "e.yaml").write_text("name: x\ntrain:\n  precision: bf16\n")
        load_experiment(tmp_path / "e.yaml")
    cpus = {
        "amx": "flags : fpu sse2 avx512f amx_bf16 amx_tile\n",
        "avx512": "flags : fpu avx512f avx512_bf16\n",
        "none": "flags : fpu sse2 avx2 avx512f\n",
    }
    for name, text in cpus.items():
        (tmp_path / name).write_text(text)
    assert resolved_precision("auto", 128, tmp_path / "amx") == "mixed_bfloat16"
    assert resolved_precision("auto", 224, tmp_path / "avx512") == "mixed_bfloat16"
    # measured slower at 64 px
    assert resolved_precision("auto", 64, tmp_path / "avx512") == "float32"
    assert resolved_precision("auto", 128, tmp_path / "none") == "float32"
    assert resolved_precision("auto", 128, tmp_path / "missing") == "float32"


@pytest.mark.slow
def test_a_run_logs_the_precision_it_used(tmp_path):
    """On this machine: the quick sweep's 64 px trains in float32; 128 px in bfloat16 where
    the CPU has the units."""
    with open("/proc/cpuinfo") as f:
        has_units = bool({"avx512_bf16", "amx_bf16"} & set(f.read().split()))
    data = tiny_dataset(tmp_path / "data", count=24)
    for size, expected in ((64, "float32"), (128, "mixed_bfloat16" if has_units else "float32")):
        exp = tiny_experiment(tmp_path, data, train={"epochs": 1}, space={"image_size": size})
        with in_project(tmp_path):
            result = CliRunner().invoke(cli, ["train", str(exp)], catch_exceptions=False)
            assert result.exit_code == 0, result.output
            run_id = result.output.split("MLflow run ")[1].split()[0]
            run = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db").get_run(run_id)
        assert run.data.params["precision"] == expected


def test_the_quality_pass_is_also_the_batch_32_latency_measurement(model):
    """A trial's quality pass at batch 32 gives latency_ms_b32 its calls: no batch of 32 is run
    again on random pixels; batch 1 gets its warm-up call and its 20 timed calls."""
    from petloc.data.pipeline import ImageSet
    from petloc.training.evaluate import TimedForward, forward_pass, latencies, quality

    calls: list[int] = []
    traced = forward_pass(model)

    def counted(x):
        calls.append(int(x.shape[0]))
        return traced(x)

    n = 32 * 6 + 1  # six full batches and one of a single image
    rng = np.random.default_rng(0)
    arrays = ImageSet(
        rng.integers(0, 256, (n, SIZE, SIZE, 3)).astype(np.uint8),
        np.zeros(n, np.int64),
        np.tile(np.array([[0.2, 0.2, 0.6, 0.6]], np.float32), (n, 1)),
        [f"{i}.jpg" for i in range(n)],
        [""] * n,
    )
    forward = TimedForward(counted)
    figures, _ = quality(model, arrays, forward)
    assert calls == [32] * 6 + [1]
    assert len(forward.warm_ms[32]) == 5  # the first call of a batch size traces: not timed as warm
    figures = latencies(model, SIZE, forward)
    assert calls[7:] == [1] * 20  # the quality pass's single image was batch 1's warm-up
    assert calls.count(32) == 6 and figures["latency_ms_b32"] > 0 and figures["latency_ms_b1"] > 0
