"""Box-aware augmentation on batches, driven by one `strength` in [0, 1] (0 = none).

Geometry is one op: each image gets a random crop window (zoom in or out, shifted, with a
little aspect change) that always contains the whole head box, resampled to the output
size with `tf.image.crop_and_resize`; the box is mapped into the window's coordinates.
A horizontal flip (in the same resampling) and colour jitter follow; random erasing outside
the head box is a kind of its own (`erase`). Boxes are normalised [x1, y1, x2, y2].

We write our own ops because Keras 3.15's box-aware layers were seen to collapse boxes
when one bounding-box dict is reused across layers (see DESIGN.md); one window per image
is also simpler and keeps the head in frame by construction.
"""

from __future__ import annotations

import tensorflow as tf


def _uniform(shape, low, high, seed):
    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high)


def _image_size(images: tf.Tensor) -> tf.Tensor:
    """[h, w] of a batch: known when the batches keep their size in their spec (and so in the
    model's trace), else read from the tensor."""
    static = tf.TensorShape(images.shape)[1:3]
    return (
        tf.constant(static.as_list(), tf.int32)
        if static.is_fully_defined()
        else tf.shape(images)[1:3]
    )


def random_windows(boxes: tf.Tensor, strength: float, seed) -> tf.Tensor:
    """Per-image windows [x1, y1, x2, y2] in normalised image coordinates that contain the box.

    Window side is 1 +- 0.5 * strength of the image (zoom in below 1, out above 1), aspect
    within +-20% * strength; position uniform among the places that keep the box inside
    (when the box is larger than the window would be, the window grows to fit it).
    """
    n = tf.shape(boxes)[0]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    scale = _uniform([n], 1.0 - 0.5 * strength, 1.0 + 0.5 * strength, seeds[0])
    aspect = _uniform([n], 1.0 - 0.2 * strength, 1.0 + 0.2 * strength, seeds[1])
    sizes = tf.stack([scale * aspect, scale / aspect], axis=1)  # [n, 2] (w, h)
    lo, hi = boxes[:, :2], boxes[:, 2:]
    sizes = tf.maximum(sizes, hi - lo)
    # Where the window's top-left corner may go: it must start before the box and end after it.
    start_min = hi - sizes
    start_max = lo
    t = tf.random.stateless_uniform([n, 2], seed=seeds[2])
    start = start_min + t * (start_max - start_min)
    return tf.concat([start, start + sizes], axis=1)


def crop_to_windows(
    images: tf.Tensor, boxes: tf.Tensor, windows: tf.Tensor, flip: tf.Tensor | None = None
):
    """Resamples each image's window to the full output size and maps its box along; where
    `flip` is true the window is also mirrored left to right, in the same resampling (a
    crop whose x1 lies right of its x2 is read backwards), so the flip costs no pass of its own."""
    size = _image_size(images)
    h, w = tf.cast(size[0], tf.float32), tf.cast(size[1], tf.float32)
    # crop_and_resize places sample j at a + j * (b - a) / (S - 1) on pixel centres (0..S-1);
    # convert our pixel-edge windows so that output pixel centres land on window pixel centres.
    x1, y1, x2, y2 = (windows[:, i] for i in range(4))

    def to_centres(a, b, side):
        span = (b - a) * side
        return (
            (a * side - 0.5 + 0.5 * span / side) / (side - 1),
            (a * side - 0.5 + (side - 0.5) * span / side) / (side - 1),
        )

    cy1, cy2 = to_centres(y1, y2, h)
    cx1, cx2 = to_centres(x1, x2, w)
    span = tf.concat([windows[:, 2:] - windows[:, :2]] * 2, axis=1)
    new_boxes = tf.clip_by_value((boxes - tf.concat([windows[:, :2]] * 2, axis=1)) / span, 0.0, 1.0)
    if flip is not None:
        cx1, cx2 = tf.where(flip, cx2, cx1), tf.where(flip, cx1, cx2)
        mirrored = tf.stack(
            [1.0 - new_boxes[:, 2], new_boxes[:, 1], 1.0 - new_boxes[:, 0], new_boxes[:, 3]], axis=1
        )
        new_boxes = tf.where(flip[:, None], mirrored, new_boxes)
    crop_boxes = tf.stack([cy1, cx1, cy2, cx2], axis=1)
    out = tf.image.crop_and_resize(
        images, crop_boxes, tf.range(tf.shape(images)[0]), size, extrapolation_value=0.0
    )
    return out, new_boxes


def jitter_colours(images: tf.Tensor, strength: float, seed) -> tf.Tensor:
    """Saturation, contrast and brightness changes of up to +-40% * strength; 0..255 kept.

    The three are one affine colour map per image: with grey the pixel's channel mean and m the
    image's mean (which saturation leaves alone), brightness b, contrast c and saturation s
    give b*c*s*x + b*c*(1-s)*grey + b*(1-c)*m, that is a 3x3 matrix on each pixel's colour
    plus an offset: one matrix product over the pixels instead of eight elementwise passes,
    which cost the pipeline more CPU time a batch (benchmarks/pipeline_speed.py)."""
    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    amount = 0.4 * strength
    brightness = _uniform([n], 1.0 - amount, 1.0 + amount, seeds[0])
    contrast = _uniform([n], 1.0 - amount, 1.0 + amount, seeds[1])
    saturation = _uniform([n], 1.0 - amount, 1.0 + amount, seeds[2])
    scale = brightness * contrast
    own = (scale * saturation)[:, None, None] * tf.eye(3)  # the pixel's own channel
    # its share of the grey
    grey = (scale * (1.0 - saturation) / 3.0)[:, None, None] * tf.ones([1, 3, 3])
    offset = brightness * (1.0 - contrast) * tf.reduce_mean(images, axis=[1, 2, 3])
    out = tf.einsum("nhwc,ncd->nhwd", images, own + grey) + offset[:, None, None, None]
    return tf.clip_by_value(out, 0.0, 255.0)


def erase_outside_boxes(images: tf.Tensor, boxes: tf.Tensor, share: float, seed) -> tf.Tensor:
    """Random erasing that keeps the head: `share` of the images get a rectangle (each side
    20-50% of the image's) filled with the image's mean colour, except where it overlaps the
    head box. The class head then cannot lean on one patch of fur or background alone."""
    n, size = tf.shape(images)[0], _image_size(images)
    seeds = tf.random.experimental.stateless_split(seed, 3)
    chosen = tf.random.stateless_uniform([n], seed=seeds[0]) < share
    sides = _uniform([n, 2], 0.2, 0.5, seeds[1])  # (w, h)
    start = tf.random.stateless_uniform([n, 2], seed=seeds[2]) * (1.0 - sides)
    rect = tf.concat([start, start + sides], axis=1)

    # [n, side]: the pixels in [lo, hi) of each window
    def inside(window, axis_size, lo, hi, touching):
        # By centre, or every pixel that overlaps the window at all (the head: not one pixel of it erased).
        start = tf.range(axis_size, dtype=tf.float32) / tf.cast(axis_size, tf.float32)
        end = start + 1.0 / tf.cast(axis_size, tf.float32)
        first, last = (end, start) if touching else ((start + end) / 2, (start + end) / 2)
        return (first[None, :] > window[:, lo, None]) & (last[None, :] < window[:, hi, None])

    # [n, h, w, 1]; boxes are [x1, y1, x2, y2], images [n, h, w, 3]
    def area(window, touching=False):
        rows, columns = (
            inside(window, size[0], 1, 3, touching),
            inside(window, size[1], 0, 2, touching),
        )
        return (rows[:, :, None] & columns[:, None, :])[..., None]

    erase = area(rect) & ~area(boxes, touching=True) & chosen[:, None, None, None]
    fill = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    return tf.where(erase, fill, images)


def augment(
    images: tf.Tensor, boxes: tf.Tensor, strength: float, seed, erase: float = 0.0
) -> tuple[tf.Tensor, tf.Tensor]:
    """The whole augmentation for a batch of float images (0..255) and normalised boxes:
    the crop, flip and colour jitter at `strength`, then random erasing outside the head on
    `erase` of the images."""
    if strength <= 0 and erase <= 0:
        return images, boxes
    # Four streams; the first three are those of a split in three, so the crop, flip and jitter
    # draw the same with erasing on or off.
    seeds = tf.random.experimental.stateless_split(tf.convert_to_tensor(seed, tf.int64), 4)
    images = tf.cast(images, tf.float32)
    if strength > 0:
        flip = tf.random.stateless_uniform([tf.shape(images)[0]], seed=seeds[1]) < 0.5
        images, boxes = crop_to_windows(
            images, boxes, random_windows(boxes, strength, seeds[0]), flip
        )
        images = jitter_colours(images, strength, seeds[2])
    if erase > 0:
        images = erase_outside_boxes(images, boxes, erase, seeds[3])
    return images, boxes
