"""The box must follow the pixels through every augmentation, at every strength."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from petloc.data.augment import augment, crop_to_windows, erase_outside_boxes, jitter_colours
from petloc.model.metrics import box_iou

SIZE = 64


def painted(boxes: np.ndarray) -> np.ndarray:
    """Black images with the box region painted white (boxes normalised, on the pixel grid)."""
    images = np.zeros((len(boxes), SIZE, SIZE, 3), np.float32)
    for image, box in zip(images, boxes, strict=True):
        x1, y1, x2, y2 = np.round(box * SIZE).astype(int)
        image[y1:y2, x1:x2] = 255.0
    return images


def found(images: np.ndarray) -> np.ndarray:
    """The bounding box of the bright region of each image, normalised."""
    out = []
    for image in images:
        grey = image.mean(axis=-1)
        ys, xs = np.nonzero(grey > grey.max() / 2)
        out.append([xs.min() / SIZE, ys.min() / SIZE, (xs.max() + 1) / SIZE, (ys.max() + 1) / SIZE])
    return np.array(out)


box_corners = st.tuples(
    st.integers(0, SIZE - 16),
    st.integers(0, SIZE - 16),
    st.integers(12, SIZE),
    st.integers(12, SIZE),
).map(lambda t: [t[0], t[1], min(SIZE, t[0] + t[2]), min(SIZE, t[1] + t[3])])


@settings(max_examples=25, deadline=None)
@given(
    corners=st.lists(box_corners, min_size=1, max_size=6),
    strength=st.sampled_from([0.1, 0.3, 0.6, 1.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_box_follows_the_pixels(corners, strength, seed):
    boxes = np.array(corners, np.float32) / SIZE
    images, new_boxes = augment(painted(boxes), boxes, strength, (seed, 7))
    images, new_boxes = images.numpy(), new_boxes.numpy()
    ious = box_iou(found(images), new_boxes)
    # A pixel of resampling blur on a box as small as 6 px keeps IoU well above 0.7.
    assert ious.min() > 0.7, (ious, new_boxes, found(images))
    assert (new_boxes >= 0).all() and (new_boxes <= 1).all()
    assert (new_boxes[:, 2:] > new_boxes[:, :2]).all()


def test_strength_zero_changes_nothing():
    boxes = np.array([[0.25, 0.25, 0.75, 0.5]], np.float32)
    images = painted(boxes)
    out, out_boxes = augment(images, boxes, 0.0, (1, 2))
    np.testing.assert_array_equal(np.asarray(out), images)
    np.testing.assert_array_equal(np.asarray(out_boxes), boxes)


def test_the_whole_image_as_window_is_the_identity():
    boxes = np.array([[0.125, 0.25, 0.5, 0.75]], np.float32)
    images = painted(boxes)
    out, out_boxes = crop_to_windows(images, boxes, np.array([[0.0, 0.0, 1.0, 1.0]], np.float32))
    np.testing.assert_allclose(np.asarray(out), images, atol=1e-3)
    np.testing.assert_allclose(np.asarray(out_boxes), boxes, atol=1e-6)


def test_flip_mirrors_pixels_and_box_in_the_same_resampling():
    boxes = np.array([[0.125, 0.25, 0.5, 0.75]] * 2, np.float32)
    images = painted(boxes)
    # a ramp left to right, to see the mirror
    images[:, :, :, 0] += np.arange(SIZE, dtype=np.float32)
    whole = np.array([[0.0, 0.0, 1.0, 1.0]] * 2, np.float32)
    out, out_boxes = crop_to_windows(images, boxes, whole, tf.constant([True, False]))
    np.testing.assert_allclose(np.asarray(out)[0], images[0, :, ::-1], atol=1e-3)
    np.testing.assert_allclose(np.asarray(out)[1], images[1], atol=1e-3)
    np.testing.assert_allclose(
        np.asarray(out_boxes), [[0.5, 0.25, 0.875, 0.75], boxes[1]], atol=1e-6
    )


def test_colour_jitter_is_saturation_then_contrast_then_brightness():
    # The op is fused into one affine map per image; this is the step-by-step definition.
    images = np.random.default_rng(0).uniform(0, 255, (3, 8, 8, 3)).astype(np.float32)
    seed = tf.constant([3, 4], tf.int64)
    seeds = tf.random.experimental.stateless_split(seed, 3)
    b, c, s = (
        tf.random.stateless_uniform([3, 1, 1, 1], seed=seeds[i], minval=0.6, maxval=1.4).numpy()
        for i in range(3)
    )
    grey = images.mean(axis=-1, keepdims=True)
    step = grey + (images - grey) * s
    mean = step.mean(axis=(1, 2, 3), keepdims=True)
    step = np.clip((mean + (step - mean) * c) * b, 0, 255)
    np.testing.assert_allclose(np.asarray(jitter_colours(images, 1.0, seed)), step, atol=1e-3)


@pytest.mark.parametrize("strength", [0.3, 1.0])
def test_augmentation_varies_between_draws(strength):
    boxes = np.array([[0.25, 0.25, 0.75, 0.75]] * 4, np.float32)
    _, a = augment(painted(boxes), boxes, strength, (1, 1))
    _, b = augment(painted(boxes), boxes, strength, (2, 1))
    assert not np.allclose(np.asarray(a), np.asarray(b))


def test_augmented_training_batches_keep_their_image_size():
    # The model's trace sees the batches' spec: with the size unknown, each layer is traced
    # for any size (and TapsConv2D reads it from the tensor).
    from petloc.data.pipeline import ImageSet, train_batches

    n = 6
    data = ImageSet(
        np.zeros((n, 24, 24, 3), np.uint8),
        np.zeros(n, np.int32),
        np.tile([[0.2, 0.2, 0.6, 0.7]], (n, 1)).astype(np.float32),
        [f"{i}.jpg" for i in range(n)],
        [""] * n,
    )
    assert train_batches(data, 4, 0.3, seed=0).element_spec[0].shape.as_list() == [None, 24, 24, 3]


def test_erasing_greys_a_patch_outside_the_head_and_never_the_head():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (64, SIZE, SIZE, 3)).astype(np.float32)
    boxes = np.tile(np.array([[0.25, 0.25, 0.75, 0.75]], np.float32), (64, 1))
    out = erase_outside_boxes(
        tf.constant(images), tf.constant(boxes), 0.5, tf.constant([1, 2], tf.int64)
    ).numpy()
    changed = (out != images).any(axis=-1)  # [n, h, w]
    head = np.zeros((SIZE, SIZE), bool)
    head[16:48, 16:48] = True
    assert not changed[:, head].any()  # the head is never touched
    erased = changed.any(axis=(1, 2))
    assert 20 <= erased.sum() <= 44  # about half the images
    for image, before, mask in zip(out[erased], images[erased], changed[erased], strict=True):
        # filled with the image's mean colour
        assert np.allclose(image[mask], before.mean(axis=(0, 1)), atol=1e-3)
        ys, xs = np.nonzero(mask)
        rect = np.zeros_like(mask)
        rect[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
        assert np.array_equal(mask, rect & ~head)  # one rectangle, the head cut out of it
        # a patch, not a stray pixel
        assert max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 >= 0.2 * SIZE - 1


def test_erasing_leaves_the_crop_flip_and_jitter_draws_unchanged():
    images = tf.constant(
        np.random.default_rng(1).uniform(0, 255, (8, SIZE, SIZE, 3)).astype(np.float32)
    )
    boxes = tf.constant(np.tile([[0.3, 0.2, 0.7, 0.6]], (8, 1)).astype(np.float32))
    plain, plain_boxes = augment(images, boxes, 0.4, (3, 4))
    erased, erased_boxes = augment(images, boxes, 0.4, (3, 4), erase=1.0)
    assert np.array_equal(plain_boxes.numpy(), erased_boxes.numpy())
    kept = (erased.numpy() == plain.numpy()).all(axis=-1)
    assert 0.5 < kept.mean() < 1.0  # the same crop, flip and jitter; only the erased patches differ


def test_training_batches_erase_without_the_other_kinds():
    from petloc.data.pipeline import ImageSet, train_batches

    n = 8
    pixels = np.random.default_rng(2).integers(0, 255, (n, 24, 24, 3)).astype(np.uint8)
    data = ImageSet(
        pixels,
        np.zeros(n, np.int32),
        np.tile([[0.4, 0.4, 0.6, 0.6]], (n, 1)).astype(np.float32),
        [f"{i}.jpg" for i in range(n)],
        [""] * n,
    )
    plain = np.concatenate([x.numpy() for x, _ in train_batches(data, 8, 0.0, seed=0)])
    erased = np.concatenate([x.numpy() for x, _ in train_batches(data, 8, 0.0, seed=0, erase=1.0)])
    changed = (plain != erased).any(axis=-1)  # the same order (one seed): only the patches differ
    # every image has one, none on the head
    assert changed.any(axis=(1, 2)).all() and not changed[:, 10:14, 10:14].any()


def test_erasing_keeps_every_pixel_that_touches_a_lopsided_head():
    # A tall box off-centre, its edges between pixels: rows and columns must not be swapped,
    # and a pixel only partly inside the head is still the head's.
    images = np.full((200, SIZE, SIZE, 3), 100.0, np.float32)
    # every pixel its own value, so a fill shows
    images[:, :, :, 0] = np.arange(SIZE)[None, None, :]
    images[:, :, :, 1] = np.arange(SIZE)[None, :, None]
    boxes = np.tile(np.array([[0.105, 0.5, 0.4, 0.905]], np.float32), (200, 1))
    out = erase_outside_boxes(
        tf.constant(images), tf.constant(boxes), 1.0, tf.constant([5, 6], tf.int64)
    ).numpy()
    changed = (out != images).any(axis=-1).any(axis=0)  # [h, w]: ever erased
    head = np.zeros((SIZE, SIZE), bool)
    head[32:58, 6:26] = True  # rows 0.5..0.905 (pixels 32-57), columns 0.105..0.4 (pixels 6-25)
    assert not changed[head].any()
    # just outside is erased
    assert changed[31, 6:26].any() and changed[32:58, 26].any() and changed[58, 6:26].any()
