"""Pretrained image trunks: a Keras image backbone, its own preprocessing, dense features.

`keras_backbone` wraps any `keras.applications` model by its name
("MobileNetV3Small", "ResNet50", "EfficientNetB0", ...) or, when
`keras_hub` is installed, a keras-hub image backbone by its preset
("keras_hub:<preset>"), into a trunk of the project's convention:

    images [B, H, W, C] in [0, 1]
      -> (optional) bilinear resize to image_size x image_size
      -> the backbone's own preprocessing (pixels x 255, then
         `keras.applications.<family>.preprocess_input`)
      -> the backbone (include_top=False, global average pooling)
      -> (optional) dropout -> Dense(dense_units, relu) "features"

so the heads of `GradMixModel` work as on `small_cnn`. Weights are "none"
(random initialisation, offline), "imagenet" (downloaded by Keras into
~/.keras/models, or found there) or the path of a local weights file
(`.weights.h5`, or a legacy `.h5` such as Keras's `*_no_top.h5` ImageNet
files). The first `freeze_layers` layers of the backbone can be frozen (their
variables leave the target's path, so they are neither trained nor mixed;
frozen batch normalisation runs in inference mode).

`check_backbone` checks a backbone's name and weights without building it
(`config_checks` calls it before any data is loaded); every mistake is one
`ConfigError` line.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Sequence

import keras

from gradmix_tf.errors import ConfigError

HUB_PREFIX = "keras_hub:"
"""A backbone named "keras_hub:<preset>" is a keras-hub image backbone."""

WEIGHT_FILE_SUFFIXES = (".weights.h5", ".h5")
EXAMPLE_BACKBONES = ("MobileNetV3Small", "ResNet50", "EfficientNetB0", "ConvNeXtTiny")


def application_names() -> list[str]:
    """The names of the `keras.applications` model constructors."""
    return sorted(
        name
        for name in dir(keras.applications)
        if name[:1].isupper() and callable(getattr(keras.applications, name))
    )


def _unknown_backbone(backbone: str) -> ConfigError:
    close = difflib.get_close_matches(backbone, application_names(), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(
        f"unknown backbone {backbone!r}: use a keras.applications model such as "
        f"{', '.join(EXAMPLE_BACKBONES)} (all {len(application_names())}: "
        f"dir(keras.applications)), or 'keras_hub:<preset>'.{hint}"
    )


def _import_keras_hub(backbone: str):
    try:
        return importlib.import_module("keras_hub")
    except ImportError:
        raise ConfigError(
            f"backbone {backbone!r} is a keras-hub preset but keras-hub is not installed: "
            "pip install keras-hub (or pip install 'gradmix-tf[hub]')."
        ) from None


def check_backbone(
    backbone: str,
    weights: str = "none",
    freeze_layers: int = 0,
    image_size: int = 0,
    batch_norm_momentum: float = 0.0,
) -> None:
    """Raises `ConfigError` when a `keras_backbone`'s options cannot be used (nothing is
    built): the backbone, its weights, and the counts and momentum of `keras_backbone`.

    Args:
        backbone: a `keras.applications` model name, or "keras_hub:<preset>".
        weights: "none", "imagenet", or the path of a `.weights.h5` / `.h5` file.
    """
    if freeze_layers < 0:
        raise ConfigError(f"model.freeze_layers must be >= 0, got {freeze_layers}.")
    if image_size < 0:
        raise ConfigError(f"model.image_size must be >= 0 (0: no resize), got {image_size}.")
    if not 0.0 <= batch_norm_momentum < 1.0:
        raise ConfigError(
            f"model.batch_norm_momentum must be in [0, 1) (0: the backbone's own), got "
            f"{batch_norm_momentum}."
        )
    if not isinstance(backbone, str) or not backbone:
        raise ConfigError(f"model.backbone must be a model name, got {backbone!r}.")
    if backbone.startswith(HUB_PREFIX):
        _import_keras_hub(backbone)
        if weights not in ("none", "imagenet"):
            raise ConfigError(
                f"model.weights for a keras-hub backbone must be 'none' or 'imagenet' (the "
                f"preset's own weights), got {weights!r}; a local preset is a directory "
                "named in model.backbone ('keras_hub:/path/to/preset')."
            )
        return
    if backbone not in application_names():
        raise _unknown_backbone(backbone)
    if weights in ("none", "imagenet"):
        return
    if not isinstance(weights, str) or not weights.endswith(WEIGHT_FILE_SUFFIXES):
        raise ConfigError(
            "model.weights must be 'none', 'imagenet' or the path of a .weights.h5 or .h5 "
            f"file, got {weights!r}."
        )
    if not os.path.isfile(weights):
        raise ConfigError(f"model.weights: weights file not found: {weights}")


@keras.saving.register_keras_serializable(package="gradmix_tf")
class BackbonePreprocessing(keras.layers.Layer):
    """Images in [0, 1] -> the input a `keras.applications` backbone expects.

    Pixels are multiplied by 255 (the applications take 0..255 pixels), grey
    images are repeated to three channels, then the family's
    `preprocess_input` runs ("caffe": BGR minus the ImageNet mean for ResNet
    and VGG; "tf": [-1, 1] for MobileNetV2, Xception, ...; "torch": the
    ImageNet mean and std for DenseNet). For the families that preprocess
    inside the model (MobileNetV3, EfficientNet, EfficientNetV2, ConvNeXt)
    it is the identity and the model's own rescaling layers do it.

    Args:
        backbone: the `keras.applications` model name.

    Example:

    >>> layer = BackbonePreprocessing("ResNet50V2")  # "tf" mode: [0, 1] -> [-1, 1]
    >>> layer(keras.ops.ones((1, 2, 2, 3))).numpy().max()
    1.0
    """

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        constructor = getattr(keras.applications, backbone)
        self.preprocess_input = importlib.import_module(constructor.__module__).preprocess_input

    def call(self, images):
        pixels = keras.ops.cast(images, self.compute_dtype) * 255.0
        if pixels.shape[-1] == 1:
            pixels = keras.ops.repeat(pixels, 3, axis=-1)
        return self.preprocess_input(pixels)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone}


def application_backbone(
    backbone: str,
    input_shape: Sequence[int | None],
    weights: str = "none",
    freeze_layers: int = 0,
    backbone_options: dict | None = None,
    batch_norm_momentum: float = 0.0,
) -> keras.Model:
    """A `keras.applications` model `[B, H, W, 3] -> [B, D]` (no top, average pooling).

    Args:
        backbone: the model's name in `keras.applications`.
        input_shape: (H, W, 3) the backbone is built for; None sides take any size.
        weights: "none", "imagenet" or the path of a weights file of this backbone
            (include_top=False).
        freeze_layers: the first N layers are made non-trainable (N >= the number of
            layers freezes them all).
        backbone_options: more keyword arguments of the constructor (alpha, ...).
        batch_norm_momentum: the momentum of every batch normalisation's moving
            statistics; 0 keeps the backbone's own (0.999 in MobileNetV3, 0.99 in ResNet).

    Raises:
        ConfigError: for an unknown name, a missing weights file, ImageNet weights that
            cannot be downloaded, an input smaller than the backbone takes, or options
            the constructor refuses.
    """
    check_backbone(backbone, weights, freeze_layers, 0, batch_norm_momentum)
    constructor = getattr(keras.applications, backbone)
    try:
        model = constructor(
            input_shape=tuple(input_shape),
            include_top=False,
            weights=None if weights == "none" else weights,
            pooling="avg",
            **dict(backbone_options or {}),
        )
    except ValueError as error:  # e.g. "Input size must be at least 75x75; ..."
        message = " ".join(str(error).split())
        hint = " Set model.image_size to resize the images first." if "size" in message else ""
        raise ConfigError(f"backbone {backbone}: {message.rstrip('.')}.{hint}") from None
    except Exception as error:  # keras.utils.get_file raises a bare Exception
        if not str(error).startswith("URL fetch failure"):
            raise
        raise ConfigError(
            f"backbone {backbone}: cannot download its ImageNet weights "
            f"({' '.join(str(error).split())}): without network, put the no-top weights file "
            "in ~/.keras/models or pass its path as model.weights."
        ) from None
    if batch_norm_momentum:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(batch_norm_momentum)
    for layer in model.layers[:freeze_layers]:
        layer.trainable = False
    return model


def keras_hub_backbone(preset: str, weights: str = "none", freeze_layers: int = 0):
    """A keras-hub image backbone and its image converter (resizing and scaling).

    Returns:
        (backbone, converter): the backbone maps the converter's output to a feature
        map [B, h, w, D] (or tokens [B, N, D]); the converter takes 0..255 pixels.
    """
    keras_hub = _import_keras_hub(HUB_PREFIX + preset)
    model = keras_hub.models.Backbone.from_preset(preset, load_weights=weights != "none")
    converter = keras_hub.layers.ImageConverter.from_preset(preset)
    for layer in model.layers[:freeze_layers]:
        layer.trainable = False
    return model, converter


def keras_backbone(
    backbone: str = "MobileNetV3Small",
    weights: str = "none",
    input_shape: Sequence[int | None] | None = None,
    image_size: int = 0,
    freeze_layers: int = 0,
    dense_units: int = 128,
    dropout: float = 0.0,
    backbone_options: dict | None = None,
    batch_norm_momentum: float = 0.0,
    name: str = "trunk",
) -> keras.Model:
    """A pretrained (or randomly initialised) image backbone as a GradMix trunk.

    Images `[B, H, W, C]` in [0, 1] (the project's image convention) are
    resized to `image_size` (if set), preprocessed the backbone's own way
    (`BackbonePreprocessing`), encoded by the backbone with global average
    pooling and mapped to `dense_units` features (ReLU), as `small_cnn` ends.

    Input size: most `keras.applications` models take inputs from 32x32 on
    (MobileNetV3Small, ResNet50, EfficientNetB0 run on the 32x32 digits);
    InceptionV3 / InceptionResNetV2 need 75x75 and Xception 71x71: set
    `image_size` (a bilinear `Resizing` layer, also the way to feed ImageNet
    weights the resolution they were trained at, e.g. 96 or 224, at a
    quadratic cost in compute). keras-hub backbones resize to their preset's
    size by their own image converter.

    Every layer of the backbone that owns trainable variables is a mixing
    layer; `step.layer_groups="block"` mixes them by block instead
    (`gradmix_tf.mixing.groups`).

    Args:
        backbone: a `keras.applications` model name, or "keras_hub:<preset>" (a
            keras-hub preset name or local preset directory; needs `pip install
            keras-hub`).
        weights: "none" (random initialisation, offline), "imagenet", or the path of
            a `.weights.h5` / `.h5` file of this backbone built with
            include_top=False (keras-hub: "none" or "imagenet", the preset's weights).
        input_shape: (H, W, C) of the images; None: any size, 3 channels
            (`experiment.build_model` passes the data's image shape). C may be 1
            (grey, repeated to RGB) or 3.
        image_size: resize every image to image_size x image_size first; 0: no resize.
        freeze_layers: freeze the first N layers of the backbone (0: train all).
        dense_units: width of the feature layer.
        dropout: dropout rate before the feature layer.
        backbone_options: extra keyword arguments of the backbone's constructor
            (e.g. {"alpha": 0.75, "minimalistic": True} for MobileNetV3).
        batch_norm_momentum: the momentum of the backbone's batch normalisation
            statistics (`keras.applications` only); 0 keeps the backbone's own. From
            random weights over a short run, MobileNetV3's 0.999 leaves the moving
            statistics near their initial values and inference near chance; 0.9
            follows the data within tens of steps.
        name: the trunk's name.

    Example:

    >>> trunk = keras_backbone("MobileNetV3Small", input_shape=(32, 32, 3), dense_units=16)
    >>> trunk(keras.ops.zeros((2, 32, 32, 3))).shape
    TensorShape([2, 16])
    """
    input_shape = tuple(input_shape) if input_shape is not None else (None, None, 3)
    if len(input_shape) != 3 or input_shape[-1] not in (1, 3):
        raise ConfigError(
            f"the keras_backbone trunk takes images [H, W, C] with 1 or 3 channels, got "
            f"shape {input_shape}."
        )
    images = keras.Input(input_shape, name="images")
    x = images
    if image_size:
        x = keras.layers.Resizing(image_size, image_size, name="resize")(x)
    if backbone.startswith(HUB_PREFIX):
        check_backbone(backbone, weights, freeze_layers, image_size)
        encoder, converter = keras_hub_backbone(backbone[len(HUB_PREFIX) :], weights, freeze_layers)
        x = keras.layers.Rescaling(255.0, name="pixels")(x)
        x = encoder(converter(x))
        pool = keras.layers.GlobalAveragePooling2D if len(x.shape) == 4 else None
        pool = pool or keras.layers.GlobalAveragePooling1D
        x = pool(name="backbone_pool")(x)
    else:
        side = image_size or None
        spatial = (side, side) if side else input_shape[:2]
        encoder = application_backbone(
            backbone, (*spatial, 3), weights, freeze_layers, backbone_options, batch_norm_momentum
        )
        x = BackbonePreprocessing(backbone, name="preprocessing")(x)
        x = encoder(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="features")(x)
    return keras.Model(images, x, name=name)
