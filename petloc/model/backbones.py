"""Backbone registry: name -> builder. Adding a backbone is one short function, and its name
in `petloc/hyperparams.py` (which config reads without TensorFlow; a test checks the two).
Users' own backbones register through `petloc.register_backbone` (petloc/plugins.py) and are
looked up after these.

A builder takes the input size, a width multiplier and a weights choice, and returns a
`keras.Model` mapping RGB pixels in 0..255 to a feature map. Each builder puts the
scaling its network expects inside the returned model, so saved models take raw pixels.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
from keras import layers

from petloc import plugins
from petloc.cpu import CPUINFO, cpu_flags
from petloc.errors import PetlocError, did_you_mean

REGISTERED = "registered:"  # backbone: registered:NAME@ALIAS, a pretrained backbone by name
# Batch-norm momentum of every backbone: the moving statistics settle within a few dozen
# steps, so a run of a few epochs evaluates with the statistics it trained with.
BN_MOMENTUM = 0.9

Builder = Callable[[int, float, str | None], keras.Model]
BACKBONES: dict[str, Builder] = {}


def register(name: str):
    def add(builder: Builder) -> Builder:
        BACKBONES[name] = builder
        return builder

    return add


@dataclass(frozen=True)
class Pretrained:
    """A backbone that `petloc pretrain` trained, as the tracking side found it by name."""

    ref: str  # NAME@ALIAS or NAME/VERSION in the Model Registry
    backbone: str  # the architecture: a name in BACKBONES
    width: float
    weights: list = field(repr=False)  # the backbone's weights, in Keras's order
    val_data: str | None  # the split it was trained on (train/val of which data)


def build_backbone(
    name: str,
    image_size: int,
    width: float = 1.0,
    weights: str = "none",
    pretrained: Pretrained | None = None,
) -> keras.Model:
    """The backbone `name` at `image_size`; `registered:NAME@ALIAS` needs the `pretrained` network."""
    if name.startswith(REGISTERED):
        return _from_pretrained(name, image_size, pretrained)
    if name in BACKBONES:
        return BACKBONES[name](image_size, width, _weights_arg(weights))
    builder = plugins.builder(name)
    if builder is None:
        if broken := plugins.broken(name):
            raise PetlocError(f"backbone {name!r}: {broken}")
        known = sorted([*BACKBONES, *plugins.BUILDERS])
        raise PetlocError(
            f"backbone: unknown backbone {name!r};{did_you_mean(name, known)} "
            f"choose from {', '.join(known)}"
        )
    return _from_plugin(name, builder, (image_size, width, _weights_arg(weights)))


def _from_plugin(name: str, builder: Callable, args: tuple) -> keras.Model:
    """The plug-in's network, its builder's mistakes one line each. The arguments are checked
    against its signature before the call, so a TypeError from inside a builder that takes
    them keeps its traceback."""
    where = f"backbone {name!r} (plug-in {plugins.origin(name)})"
    try:
        inspect.signature(builder).bind(*args)
    except TypeError as err:
        raise PetlocError(
            f"{where}: its builder does not take (image_size, width, weights): {err}"
        ) from None
    except ValueError:  # no signature to read (a builtin or C callable): the call will tell
        pass
    net = builder(*args)
    if not isinstance(net, keras.Model):
        raise PetlocError(
            f"{where}: its builder returned a {type(net).__name__}, not a keras.Model"
        )
    return net


def _from_pretrained(name: str, image_size: int, pretrained: Pretrained | None) -> keras.Model:
    """The pretrained network rebuilt at `image_size` with its weights (the networks are fully
    convolutional). Its architecture and width are its own."""
    if pretrained is None or REGISTERED + pretrained.ref != name:
        raise PetlocError(f"backbone: {name} was not loaded from the Model Registry")
    net = build_backbone(pretrained.backbone, image_size, pretrained.width)
    try:
        net.set_weights(pretrained.weights)
    except ValueError as err:
        raise PetlocError(
            f"backbone: {name} does not hold a {pretrained.backbone} backbone ({err})"
        ) from None
    return net


def _weights_arg(weights: str) -> str | None:
    """ "none" = random init, "imagenet" = Keras download, anything else = a local file."""
    if weights == "none":
        return None
    if weights != "imagenet" and not Path(weights).is_file():
        raise PetlocError(
            f"weights: {weights!r} is neither 'none', 'imagenet' nor an existing weights file"
        )
    return weights


@keras.saving.register_keras_serializable(package="petloc")
class CaffePreprocess(layers.Layer):
    """RGB 0..255 -> BGR minus the ImageNet mean: what ResNet50 and VGG16 weights expect."""

    def call(self, x):
        bgr = keras.ops.flip(x, axis=-1)
        return bgr - keras.ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=x.dtype)


def _with_preprocess(
    preprocess: layers.Layer, net: keras.Model, image_size: int, name: str
) -> keras.Model:
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    return keras.Model(inputs, net(preprocess(inputs)), name=name)


def _applications(app, image_size: int, weights: str | None, **kwargs) -> keras.Model:
    """Builds a keras.applications network; a local weights file is loaded after building."""
    file = weights if weights not in (None, "imagenet") else None
    net = app(
        include_top=False,
        input_shape=(image_size, image_size, 3),
        weights=None if file else weights,
        **kwargs,
    )
    if file:
        net.load_weights(file)
    return short_run_batch_norm(net)


def short_run_batch_norm(net: keras.Model) -> keras.Model:
    """Every BatchNormalization of `net` at BN_MOMENTUM. Keras's applications build theirs at
    0.99 (MobileNetV2 0.999), made for ImageNet's long runs: after our few hundred steps
    their moving statistics are still mostly the initial 0 and 1, so in inference mode the
    network sees nothing (MobileNetV2, 324 steps: 72% of the initial value left, every
    prediction the same). The momentum is read when the layer runs and saved with it."""
    for layer in net.layers:  # the applications are flat functional models
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    return net


@register("simple")
def simple(image_size: int, width: float, weights: str | None) -> keras.Model:
    """Our own small CNN with an output stride of 8, so a 64 px input keeps an 8x8 map:
    a stride-2 stem, two conv+pool stages, then two convs at the final resolution."""
    return _simple("simple", image_size, width, weights, dilations=())


@register("simple_context")
def simple_context(image_size: int, width: float, weights: str | None) -> keras.Model:
    """`simple` plus two residual convolutions dilated 2 and 4 at the same stride 8: each
    cell then sees about 150 px around it instead of 52 (from the centre, all of a 128 px
    photo), so a cell at the head can tell how big the head is; 60% more compute, same map."""
    return _simple("simple_context", image_size, width, weights, dilations=(2, 4))


def _simple(
    name: str, image_size: int, width: float, weights: str | None, dilations: tuple[int, ...]
) -> keras.Model:
    if weights == "imagenet":
        raise PetlocError(
            f"weights: the {name!r} backbone has no imagenet weights; use 'none' or a weights file"
        )
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    f = max(8, round(64 * width))  # width 0.5 (32 filters) pairs with mobilenetv2 alpha 0.5
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = _conv_bn(x, f, strides=2)
    x = layers.MaxPooling2D()(_conv_bn(x, f))
    x = layers.MaxPooling2D()(_conv_bn(x, 2 * f))
    x = _conv_bn(_conv_bn(x, 4 * f), 4 * f)
    for rate in dilations:
        x = layers.Add()([x, _conv_bn(x, 4 * f, dilation=rate)])
    model = keras.Model(inputs, x, name=name)
    if weights:
        model.load_weights(weights)
    return model


def _conv_bn(x, filters: int, strides: int = 1, dilation: int = 1):
    conv = TapsConv2D if dilation > 1 and x.shape[1] < 4 * dilation else layers.Conv2D
    x = conv(filters, 3, strides=strides, dilation_rate=dilation, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    return layers.Activation("relu")(x)


def taps_pay(cpuinfo: Path = CPUINFO) -> bool:
    """Whether TapsConv2D's matrix product beats TensorFlow's own dilated convolution on this
    CPU: it does without AVX-512, and not with it, where oneDNN's convolution dilates without
    the padding (benchmarks/dilated_conv_speed.py; figures in benchmarks/RESULTS.md)."""
    return "avx512f" not in cpu_flags(cpuinfo)


@keras.saving.register_keras_serializable(package="petloc")
class TapsConv2D(layers.Conv2D):
    """A 3x3 Conv2D (stride 1, "same", no bias) with a dilation rate, computed as one matrix
    product over the nine shifted copies of the map; the same kernel and results as Conv2D.
    TensorFlow's CPU kernels dilate by padding the map into rate x rate blocks, which on a
    map under 4 x rate wide is mostly padding, so that convolution's training step is slower
    than the product on AVX2 (benchmarks/RESULTS.md).
    Where that is not so (`taps_pay`), it runs Conv2D's own computation: the choice is made
    by the machine that runs the model, not by the one that saved it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if (self.kernel_size, self.strides, self.padding, self.use_bias) != (
            (3, 3),
            (1, 1),
            "same",
            False,
        ):
            raise ValueError(
                "TapsConv2D computes 3x3 kernels at stride 1, 'same' padding, without bias"
            )
        self.taps = taps_pay()

    def call(self, inputs):
        if not self.taps:
            return super().call(inputs)
        rate, shape = self.dilation_rate[0], keras.ops.shape(inputs)
        # a batch may come unsized
        height, width = (static or shape[i + 1] for i, static in enumerate(inputs.shape[1:3]))
        padded = keras.ops.pad(inputs, [[0, 0], [rate, rate], [rate, rate], [0, 0]])
        taps = keras.ops.concatenate(
            [
                padded[:, i * rate : i * rate + height, j * rate : j * rate + width, :]
                for i in range(3)
                for j in range(3)
            ],
            axis=-1,
        )
        return keras.ops.matmul(taps, keras.ops.reshape(self.kernel, (-1, self.filters)))


@register("small_resnet")
def small_resnet(image_size: int, width: float, weights: str | None) -> keras.Model:
    """Our own small residual network with an output stride of 16. Same cost as `simple`
    at the same width, but twelve convolutions deep instead of five, so each cell of the
    final map sees most of a 128 px photo (what telling a cat's head from a dog's needs)."""
    if weights == "imagenet":
        raise PetlocError(
            "weights: the 'small_resnet' backbone has no imagenet weights; use 'none' or a weights file"
        )
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    f = max(8, round(64 * width))
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = _conv_bn(_conv_bn(x, f, strides=2), f, strides=2)  # stride 4
    for filters, strides in ((f, 1), (2 * f, 2), (2 * f, 1), (4 * f, 2), (4 * f, 1)):
        x = _residual_block(x, filters, strides)
    model = keras.Model(inputs, x, name="small_resnet")
    if weights:
        model.load_weights(weights)
    return model


def _residual_block(x, filters: int, strides: int):
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False)(x)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM)(shortcut)
    y = _conv_bn(x, filters, strides=strides)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM)(y)
    return layers.Activation("relu")(layers.Add()([shortcut, y]))


@register("mobilenetv2")
def mobilenetv2(image_size: int, width: float, weights: str | None) -> keras.Model:
    net = _applications(keras.applications.MobileNetV2, image_size, weights, alpha=width)
    return _with_preprocess(
        layers.Rescaling(1 / 127.5, offset=-1.0), net, image_size, "mobilenetv2"
    )


@register("efficientnetb0")
def efficientnetb0(image_size: int, width: float, weights: str | None) -> keras.Model:
    # EfficientNet rescales and normalises inside itself: it takes 0..255 as they are.
    return _applications(keras.applications.EfficientNetB0, image_size, weights)


def _caffe_or_unit(weights: str | None) -> layers.Layer:
    """Caffe's inputs (BGR minus the ImageNet mean, +-128) are what ResNet50's and VGG16's
    ImageNet weights were trained on; from scratch, inputs in -1..1 instead, as every other
    backbone: at +-128 VGG16's first class loss was 305 (tests/model/test_backbones_learn.py)."""
    return CaffePreprocess() if weights else layers.Rescaling(1 / 127.5, offset=-1.0)


@register("resnet50")
def resnet50(image_size: int, width: float, weights: str | None) -> keras.Model:
    net = _applications(keras.applications.ResNet50, image_size, weights)
    return _with_preprocess(_caffe_or_unit(weights), net, image_size, "resnet50")


@register("vgg16")
def vgg16(image_size: int, width: float, weights: str | None) -> keras.Model:
    net = _applications(keras.applications.VGG16, image_size, weights)
    return _with_preprocess(_caffe_or_unit(weights), net, image_size, "vgg16")
