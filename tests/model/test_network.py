"""The network: every registered backbone trains, the heads have the contract's shape,
losses and metrics agree with hand-computed values, and a saved model reloads safely."""

import keras
import numpy as np
import pytest

from petloc.errors import PetlocError
from petloc.model import (
    BACKBONES,
    BOX_LOSSES,
    TTA,
    Hyperparameters,
    build_backbone,
    build_model,
    compile_model,
)
from petloc.model.metrics import box_iou, summarise

SIZE = 32


def batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.float32)
    y = {
        "cls": rng.integers(0, 2, n),
        "box": np.tile([[0.2, 0.3, 0.6, 0.9]], (n, 1)).astype(np.float32),
    }
    return x, y


# `simple` in the fast tier; every other backbone (the big Keras applications among them) in the slow one.
@pytest.mark.parametrize(
    "name",
    [
        name if name == "simple" else pytest.param(name, marks=pytest.mark.slow)
        for name in sorted(BACKBONES)
    ],
)
def test_every_backbone_runs_forward_and_backward(name):
    spec = Hyperparameters(
        backbone=name, width=0.35 if name == "mobilenetv2" else 0.5, head_units=16
    )
    model = compile_model(build_model(spec, SIZE), spec)
    model.run_eagerly = True  # tracing the big backbones' train step takes a minute each
    x, y = batch()
    out = model(x)
    assert out["cls"].shape == (4, 2) and out["box"].shape == (4, 4)
    np.testing.assert_allclose(np.asarray(out["cls"]).sum(axis=1), 1.0, rtol=1e-5)
    assert ((np.asarray(out["box"]) >= 0) & (np.asarray(out["box"]) <= 1)).all()
    before = [w.copy() for w in model.get_weights()]
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_unknown_backbone_names_the_choices():
    with pytest.raises(PetlocError, match=r"unknown backbone 'vgg19'.*mobilenetv2"):
        build_backbone("vgg19", SIZE)


def test_local_weights_file_is_loaded(tmp_path):
    net = build_backbone("simple", SIZE, 0.5)
    path = tmp_path / "simple.weights.h5"
    net.save_weights(path)
    again = build_backbone("simple", SIZE, 0.5, str(path))
    for a, b in zip(net.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_registered_backbone_gives_the_features_it_was_trained_with():
    """A pretrained vgg16 (-1..1 inputs, from scratch) rebuilt by name: the same pixels give
    the same features as when it was trained."""
    from petloc.model.backbones import Pretrained

    x, _ = batch()
    trained = build_backbone("vgg16", SIZE, 1.0)
    pretrained = Pretrained("b@champion", "vgg16", 1.0, trained.get_weights(), None)
    again = build_backbone("registered:b@champion", SIZE, pretrained=pretrained)
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(trained(x)), rtol=1e-4, atol=1e-4)


def test_resnet50_and_vgg16_take_caffe_s_inputs_only_with_weights(tmp_path):
    from petloc.model.backbones import CaffePreprocess

    path = tmp_path / "vgg16.weights.h5"
    keras.applications.VGG16(
        include_top=False, input_shape=(SIZE, SIZE, 3), weights=None
    ).save_weights(path)
    caffe = [
        any(
            isinstance(layer, CaffePreprocess)
            for layer in build_backbone("vgg16", SIZE, 1.0, *weights).layers
        )
        for weights in ([str(path)], [])
    ]
    assert caffe == [True, False]


def test_missing_weights_file_is_a_user_error(tmp_path):
    with pytest.raises(PetlocError, match="weights"):
        build_backbone("simple", SIZE, 0.5, str(tmp_path / "nope.h5"))


def test_iou_by_hand():
    true = np.array([[0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 1, 1]], float)
    pred = np.array([[1, 1, 3, 3], [0, 0, 1, 1], [2, 2, 3, 3]], float)
    np.testing.assert_allclose(box_iou(true, pred), [1 / 7, 1.0, 0.0])
    # An inverted prediction is read with its corners ordered.
    np.testing.assert_allclose(box_iou([[0, 0, 1, 1]], [[1, 1, 0, 0]]), [1.0])
    figures = summarise([0, 1, 1], [0, 1, 0], true, pred)
    assert figures == pytest.approx({"miou": (1 / 7 + 1) / 3, "iou50": 1 / 3, "accuracy": 2 / 3})


def test_box_losses_are_zero_on_a_perfect_box_and_grow_with_error():
    true = np.array([[0.2, 0.2, 0.6, 0.6]], np.float32)
    near = np.array([[0.25, 0.2, 0.6, 0.65]], np.float32)
    far = np.array([[0.7, 0.7, 0.9, 0.9]], np.float32)
    for name, loss in BOX_LOSSES.items():
        perfect, close, wrong = (float(np.asarray(loss(true, p))[0]) for p in (true, near, far))
        assert perfect == pytest.approx(0.0, abs=1e-5), name
        assert 0 < close < wrong, name
    # GIoU keeps a gradient for disjoint boxes: its loss exceeds 1 there.
    assert float(np.asarray(BOX_LOSSES["giou"](true, far))[0]) > 1.0


def test_saved_model_reloads_in_safe_mode_with_same_outputs(tmp_path):
    # carries a custom layer (CaffePreprocess), as resnet50 does, and builds 5x faster
    spec = Hyperparameters(backbone="vgg16", head_units=8)
    model = compile_model(build_model(spec, SIZE), spec)
    x, _ = batch(2)
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    for key in ("cls", "box"):
        np.testing.assert_allclose(
            np.asarray(model(x)[key]), np.asarray(again(x)[key]), rtol=1e-4, atol=1e-5
        )


def test_flip_tta_averages_each_photo_with_its_mirror_and_reloads(tmp_path):
    spec = Hyperparameters(backbone="simple", width=0.25, head_units=8)
    model = build_model(spec, SIZE)
    tta = TTA["flip"](model)
    x, _ = batch(3)
    plain, mirrored = model(x), model(x[:, :, ::-1])
    mb = np.asarray(mirrored["box"])
    unmirrored = np.stack([1 - mb[:, 2], mb[:, 1], 1 - mb[:, 0], mb[:, 3]], axis=1)
    out = tta(x)
    np.testing.assert_allclose(
        np.asarray(out["box"]), (np.asarray(plain["box"]) + unmirrored) / 2, atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(out["cls"]),
        (np.asarray(plain["cls"]) + np.asarray(mirrored["cls"])) / 2,
        atol=1e-5,
    )
    path = tmp_path / "tta.keras"
    tta.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(again(x)["box"]), np.asarray(out["box"]), atol=1e-5)


def test_l1_giou_is_l1_plus_part_of_giou():
    true = np.array([[0.2, 0.2, 0.6, 0.6]], np.float32)
    pred = np.array([[0.3, 0.1, 0.7, 0.5]], np.float32)
    mixed = float(np.asarray(BOX_LOSSES["l1_giou"](true, pred))[0])
    parts = [float(np.asarray(BOX_LOSSES[n](true, pred))[0]) for n in ("l1", "giou")]
    assert mixed == pytest.approx(parts[0] + 0.4 * parts[1], rel=1e-5)


def test_head_crop_cuts_the_box_with_its_margin():
    from petloc.model.heads import CropBoxes

    images = np.zeros((1, 40, 40, 3), np.float32)
    images[0, 10:20, 20:30] = 255.0  # a 10 x 10 "head" at x 20..30, y 10..20
    box = np.array([[0.5, 0.25, 0.75, 0.5]], np.float32)
    crop = np.asarray(CropBoxes(20, margin=0.0)(images, box))
    # the head fills the crop
    assert crop.shape == (1, 20, 20, 3) and crop[0, 2:-2, 2:-2].min() > 200
    wide = np.asarray(CropBoxes(20, margin=0.5)(images, box))[0, ..., 0]
    assert wide[10, 10] > 200 and wide[1, 1] < 50  # head in the middle, background at the edge


@pytest.mark.slow  # XLA compiles the train step
def test_context_backbone_trains_under_xla():
    spec = Hyperparameters(
        backbone="simple_context", width=0.25, head_units=8, box_loss="l1_giou", box_head="centre"
    )
    keras.utils.set_random_seed(0)  # one start: a few steps from an unlucky one can climb first
    model = compile_model(build_model(spec, SIZE), spec, jit_compile=True)
    assert model.get_layer("simple_context").output.shape[1] == SIZE // 8  # still stride 8
    assert model.jit_compile is True  # Keras turns XLA off silently for layers it cannot compile
    x, y = batch()
    losses = [model.train_on_batch(x, y, return_dict=True)["loss"] for _ in range(10)]
    assert np.isfinite(losses).all() and max(losses[-3:]) < losses[0], losses


@pytest.mark.slow  # the head crop also trains and reloads in test_centre_box_head_trains_on_unsized_batches_and_reloads
def test_head_crop_stage_trains_and_reloads(tmp_path):
    spec = Hyperparameters(
        backbone="simple", width=0.25, head_units=8, box_loss="l1", second_stage="head_crop"
    )
    model = compile_model(build_model(spec, SIZE), spec)
    x, y = batch()
    assert np.isfinite(model.train_on_batch(x, y, return_dict=True)["loss"])
    path = tmp_path / "crop.keras"
    model.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(again(x)["cls"]), np.asarray(model(x)["cls"]), atol=1e-5)


def test_soft_argmax_finds_the_peak_and_pools_the_features_there():
    from petloc.model.heads import CentreSizeBox, SoftArgmaxPool

    logits = np.full((1, 4, 8, 1), -50.0, np.float32)
    logits[0, 1, 6, 0] = 50.0  # row 1 of 4, column 6 of 8
    features = np.zeros((1, 4, 8, 3), np.float32)
    features[0, 1, 6] = [1.0, 2.0, 3.0]
    centre, pooled = SoftArgmaxPool()(logits, features)
    np.testing.assert_allclose(np.asarray(centre), [[6.5 / 8, 1.5 / 4]], atol=1e-5)
    np.testing.assert_allclose(np.asarray(pooled), [[1.0, 2.0, 3.0]], atol=1e-5)
    # Two equal peaks: the expected position lies between them.
    logits[0, 1, 2, 0] = 50.0
    centre, _ = SoftArgmaxPool()(logits, features)
    np.testing.assert_allclose(np.asarray(centre), [[4.5 / 8, 1.5 / 4]], atol=1e-5)
    box = CentreSizeBox()(np.array([[0.5, 0.2]], np.float32), np.array([[0.4, 0.6]], np.float32))
    # clipped at the top
    np.testing.assert_allclose(np.asarray(box), [[0.3, 0.0, 0.7, 0.5]], atol=1e-6)


# The fast tier trains the centre head once, with the head crop; alone and under XLA in the slow one.
@pytest.mark.parametrize(
    "second_stage, xla",
    [
        pytest.param("none", False, marks=pytest.mark.slow),
        ("head_crop", False),
        pytest.param("none", True, marks=pytest.mark.slow),
    ],
)
def test_centre_box_head_trains_on_unsized_batches_and_reloads(tmp_path, second_stage, xla):
    import tensorflow as tf

    spec = Hyperparameters(
        backbone="simple",
        width=0.25,
        head_units=8,
        box_loss="l1",
        box_head="centre",
        second_stage=second_stage,
    )
    model = compile_model(build_model(spec, SIZE), spec, jit_compile=xla)
    assert model.jit_compile is xla
    x, y = batch()
    before = np.asarray(model(x)["box"])

    # Batches whose image size is not static, as the augmentation pipeline makes them.
    def forget_size(images, targets):
        return tf.ensure_shape(
            tf.numpy_function(lambda a: a, [images], tf.float32), [None, None, None, 3]
        ), targets

    unsized = tf.data.Dataset.from_tensors((x, y)).map(forget_size)
    assert unsized.element_spec[0].shape[1] is None
    history = model.fit(unsized.repeat(3), epochs=1)
    assert np.isfinite(history.history["loss"][-1])
    assert not np.allclose(before, np.asarray(model(x)["box"]))
    path = tmp_path / "centre.keras"
    model.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(again(x)["box"]), np.asarray(model(x)["box"]), atol=1e-5)


def test_centre_head_and_head_crop_train_under_mixed_bfloat16():
    # benchmarks/training_step.py times this setting; the box's position stays float32.
    from petloc.training.fit import dtype_policy

    with dtype_policy("mixed_bfloat16"):
        spec = Hyperparameters(
            backbone="simple",
            width=0.25,
            head_units=8,
            box_loss="l1_giou",
            box_head="centre",
            second_stage="head_crop",
        )
        model = compile_model(build_model(spec, SIZE), spec)
    assert model.get_layer("box_heatmap").compute_dtype == "bfloat16"
    for name in ("box_centre", "box", "box_size", "cls", "head_crop"):
        assert model.get_layer(name).compute_dtype == "float32", name
    x, y = batch()
    assert np.isfinite(model.train_on_batch(x, y, return_dict=True)["loss"])
    assert model(x)["box"].dtype == "float32"


# The fast tier has it end to end: tests/cli/test_train_evaluate_predict.py trains in
# mixed_bfloat16, loads float32.
@pytest.mark.slow
def test_mixed_precision_trains_in_bfloat16_and_returns_the_same_network_in_float32():
    from petloc.data.pipeline import ImageSet
    from petloc.training.fit import fit_localiser

    class Look(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            self.trained = self.model  # after KeepBest has put the best weights back

    x, y = batch(n=8)
    data = ImageSet(
        x.astype(np.uint8),
        y["cls"].astype(np.int32),
        y["box"],
        [f"{i}.jpg" for i in range(8)],
        [""] * 8,
    )
    hp = {
        "backbone": "simple",
        "width": 0.25,
        "head_units": 8,
        "image_size": SIZE,
        "aug_strength": 0.0,
        "batch_size": 4,
        "box_loss": "l1",
        "box_head": "centre",
    }
    look = Look()
    model, _ = fit_localiser(hp, data, data, epochs=1, precision="mixed_bfloat16", callbacks=[look])
    assert look.trained.get_layer("box_heatmap").compute_dtype == "bfloat16"
    assert model.get_layer("box_heatmap").compute_dtype == "float32"
    # restored for whatever comes next
    assert keras.mixed_precision.global_policy().name == "float32"
    assert len(model.get_weights()) == len(look.trained.get_weights())
    for a, b in zip(model.get_weights(), look.trained.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(
        np.asarray(model(x)["box"]), np.asarray(look.trained(x)["box"]), atol=0.03
    )


def test_weight_averaging_keeps_the_average_that_was_validated():
    # hp `ema`: each epoch's validation scores the moving average of the weights, and the
    # model fit returns is that average, not the raw weights of the last step.
    from petloc.data.pipeline import ImageSet
    from petloc.training.fit import fit_localiser

    class LastRawWeights(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.raw = [w.copy() for w in self.model.get_weights()]

    x, y = batch(n=8)
    data = ImageSet(
        x.astype(np.uint8),
        y["cls"].astype(np.int32),
        y["box"],
        [f"{i}.jpg" for i in range(8)],
        [""] * 8,
    )
    hp = {
        "backbone": "simple",
        "width": 0.25,
        "head_units": 8,
        "image_size": SIZE,
        "aug_strength": 0.0,
        "batch_size": 4,
        "box_loss": "l1",
        "learning_rate": 1e-2,
        "ema": 0.9,
    }
    raw = LastRawWeights()
    model, history = fit_localiser(hp, data, data, epochs=1, callbacks=[raw])
    assert model.optimizer.use_ema and model.optimizer.ema_momentum == 0.9
    assert any(not np.allclose(a, b) for a, b in zip(model.get_weights(), raw.raw, strict=True))
    logs = model.evaluate(x.astype(np.uint8), y, batch_size=4, return_dict=True, verbose=0)
    assert logs["box_miou"] == pytest.approx(history.history["val_miou"][-1], abs=1e-5)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_the_training_step_is_traced_once(ema, monkeypatch):
    # Keras creates the optimizer's slots and the metrics' totals in the first trace of the
    # step unless they exist before, and TensorFlow then traces it again (2 s of every trial
    # on 2 cores): `fit` builds them first.
    from petloc.data.pipeline import ImageSet
    from petloc.training.fit import fit_localiser

    traces = []
    step = keras.Model.train_step
    monkeypatch.setattr(
        keras.Model, "train_step", lambda self, data: traces.append(1) or step(self, data)
    )
    x, y = batch(n=8)
    data = ImageSet(
        x.astype(np.uint8),
        y["cls"].astype(np.int32),
        y["box"],
        [f"{i}.jpg" for i in range(8)],
        [""] * 8,
    )
    # simple_context at 32 px: its dilated layers are TapsConv2D, fed the augmented batches
    hp = {
        "backbone": "simple_context",
        "width": 0.25,
        "head_units": 8,
        "image_size": SIZE,
        "aug_strength": 0.3,
        "batch_size": 4,
        "ema": ema,
        "class_weight": "balanced",
    }
    _, history = fit_localiser(hp, data, data, epochs=2)
    assert len(traces) == 1
    assert len(history.history["val_miou"]) == 2


def test_one_training_iterator_serves_every_epoch(monkeypatch):
    # Keras makes a new iterator for each epoch of a finite dataset (the shuffle buffer filled,
    # the first batch augmented, the pipeline's threads stopped: 0.1 s an epoch on 2 cores).
    # `fit` repeats the batches instead; every epoch is still one whole pass.
    import tensorflow as tf

    from petloc.data.pipeline import ImageSet
    from petloc.training.fit import fit_localiser

    made = []
    iterate = tf.data.Dataset.__iter__
    monkeypatch.setattr(
        tf.data.Dataset,
        "__iter__",
        lambda self: made.append(int(self.cardinality())) or iterate(self),
    )
    x, y = batch(n=12)
    train = ImageSet(
        x.astype(np.uint8),
        y["cls"].astype(np.int32),
        y["box"],
        [f"{i}.jpg" for i in range(12)],
        [""] * 12,
    )
    val = train.subset(np.arange(8))
    steps = []
    counter = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda *_, **__: steps.append(0),
        on_train_batch_end=lambda *_, **__: steps.__setitem__(-1, steps[-1] + 1),
    )
    hp = {
        "backbone": "simple",
        "width": 0.25,
        "head_units": 8,
        "image_size": SIZE,
        "aug_strength": 0.3,
        "batch_size": 4,
    }
    fit_localiser(hp, train, val, epochs=3, callbacks=[counter])
    assert steps == [3, 3, 3]
    # training: one iterator of the repeated batches (-1: infinite) for the three epochs;
    # validation (2 batches) as Keras does it
    assert [c for c in made if c != 2] == [-1]


def test_endless_training_batches_reshuffle_and_reaugment_each_pass():
    from petloc.data.pipeline import ImageSet, train_batches
    from petloc.training.fit import endless

    x, y = batch(n=10)
    data = ImageSet(
        x.astype(np.uint8),
        np.arange(10, dtype=np.int32) % 2,
        y["box"],
        [f"{i}.jpg" for i in range(10)],
        [""] * 10,
    )
    batches, steps = endless(train_batches(data, 4, 0.3, seed=0))
    assert steps == 3
    drawn = list(batches.take(2 * steps))  # two passes of one iterator, as `fit` reads them
    boxes = [
        np.concatenate([b[1]["box"].numpy() for b in drawn[p * steps : (p + 1) * steps]])
        for p in range(2)
    ]
    assert [len(b) for b in boxes] == [10, 10]  # each pass: every image once (4 + 4 + 2)
    assert not np.allclose(boxes[0], boxes[1])  # another order and other crops


@pytest.mark.parametrize("side, rate", [(8, 4), (6, 4), (6, 2), (5, 2)])
def test_taps_conv_computes_what_a_dilated_conv2d_computes(side, rate):
    # simple_context's dilated layers on small maps (tests below: which ones) are TapsConv2D:
    # same kernel, same outputs and gradients as Keras's Conv2D, only faster there.
    import tensorflow as tf

    from petloc.model.backbones import TapsConv2D

    x = tf.constant(np.random.default_rng(0).normal(size=(2, side, side, 6)).astype(np.float32))
    keras_conv = keras.layers.Conv2D(5, 3, dilation_rate=rate, padding="same", use_bias=False)
    taps_conv = TapsConv2D(5, 3, dilation_rate=rate, padding="same", use_bias=False)
    taps_conv.taps = True  # its matrix product, on any CPU (an AVX-512 one runs Conv2D's own)
    keras_conv.build(x.shape), taps_conv.build(x.shape)
    taps_conv.set_weights(keras_conv.get_weights())
    # every output counts differently
    weights = tf.reshape(tf.range(2 * side * side * 5, dtype=tf.float32) * 1e-3, (2, side, side, 5))
    results = []
    for conv in (keras_conv, taps_conv):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = conv(x)
            loss = tf.reduce_sum(y * weights)
        results.append([y.numpy()] + [g.numpy() for g in tape.gradient(loss, [x, conv.kernel])])
    for theirs, mine in zip(*results, strict=True):  # outputs, input gradients, kernel gradients
        np.testing.assert_allclose(mine, theirs, atol=1e-4)
    # a batch of unknown size
    unsized = tf.function(taps_conv.call, input_signature=[tf.TensorSpec([None, None, None, 6])])
    np.testing.assert_allclose(unsized(x).numpy(), results[0][0], atol=1e-4)


def test_taps_run_only_where_the_cpu_lacks_avx512(tmp_path):
    # Measured: TapsConv2D's product made simple_context's step 0.55-0.75x on AVX2, 1.07-1.21x on AVX-512.
    from petloc.model.backbones import taps_pay

    (tmp_path / "avx2").write_text("flags\t\t: fpu sse2 avx avx2 fma\n")
    (tmp_path / "avx512").write_text(
        "flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16\n"
    )
    assert taps_pay(tmp_path / "avx2") and not taps_pay(tmp_path / "avx512")
    assert taps_pay(tmp_path / "missing")  # flags unknown: the product, as on AVX2


def test_simple_context_dilates_with_taps_only_where_the_map_is_small():
    from petloc.model.backbones import TapsConv2D

    def dilated(size):
        net = build_backbone("simple_context", size, 0.25)
        return [
            (layer.dilation_rate[0], type(layer) is TapsConv2D)
            for layer in net.layers
            if isinstance(layer, keras.layers.Conv2D) and layer.dilation_rate[0] > 1
        ]

    assert dilated(64) == [(2, False), (4, True)]  # an 8x8 map
    assert dilated(128) == [(2, False), (4, False)]  # 16x16: TensorFlow's own is as fast or faster


def test_learning_rate_warms_up_linearly_then_decays_to_five_percent():
    # hp `lr_warmup` (epochs): from 5% of the rate to all of it, then the cosine decay to 5% by the last step.
    from petloc.data.pipeline import ImageSet
    from petloc.training.fit import fit_localiser

    x, y = batch(n=8)
    data = ImageSet(
        x.astype(np.uint8),
        y["cls"].astype(np.int32),
        y["box"],
        [f"{i}.jpg" for i in range(8)],
        [""] * 8,
    )
    hp = {
        "backbone": "simple",
        "width": 0.25,
        "head_units": 8,
        "image_size": SIZE,
        "aug_strength": 0.0,
        "batch_size": 4,
        "box_loss": "l1",
        "learning_rate": 1e-2,
        "lr_warmup": 1.0,
    }
    model, _ = fit_localiser(hp, data, data, epochs=3)  # 2 steps an epoch: 2 of warm-up, 4 of decay
    rate = model.optimizer.learning_rate
    schedule = [float(model.optimizer._learning_rate(step)) for step in range(7)]
    assert (
        schedule[0] == pytest.approx(5e-4)
        and schedule[1] == pytest.approx(5.25e-3)
        and schedule[2] == pytest.approx(1e-2)
    )
    assert (
        schedule[2] > schedule[3] > schedule[4] > schedule[5] > schedule[6] == pytest.approx(5e-4)
    )
    assert float(rate) == pytest.approx(5e-4)  # where the run ended
    plain = compile_model(
        build_model(Hyperparameters(backbone="simple", width=0.25, learning_rate=1e-2), SIZE),
        Hyperparameters(backbone="simple", width=0.25, learning_rate=1e-2),
        steps_per_epoch=2,
        epochs=3,
    )
    # no warm-up unless asked
    assert float(plain.optimizer._learning_rate(0)) == pytest.approx(1e-2)


def test_label_smoothing_smooths_the_class_targets_and_reloads(tmp_path):
    """label_smoothing s: the class loss is the cross-entropy against 1 - s/2 and s/2, so a
    confident right answer still costs something; the compiled model saves and reloads."""
    from petloc.model.losses import SmoothedClassLoss

    probs = np.array([[0.99, 0.01], [0.2, 0.8]], np.float32)
    labels = np.array([0, 1])
    smoothed = np.asarray(SmoothedClassLoss(0.1)(labels, probs))
    targets = np.array([[0.95, 0.05], [0.05, 0.95]])
    expected = -(targets * np.log(probs)).sum(axis=1).mean()
    np.testing.assert_allclose(smoothed, expected, rtol=1e-5)
    plain = np.asarray(keras.losses.SparseCategoricalCrossentropy()(labels, probs))
    assert np.asarray(SmoothedClassLoss(0.0)(labels, probs)) == pytest.approx(plain, rel=1e-5)

    spec = Hyperparameters(head_units=8, label_smoothing=0.1)
    model = compile_model(build_model(spec, SIZE), spec)
    model.fit(*batch(4), epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert again.loss["cls"].smoothing == 0.1
