"""Video trunks f_theta: `[B, T, H, W, C]` clips in [0, 1] -> `[B, features]`.

They plug into `GradMixModel` like any trunk (the method is model-agnostic):
every layer that owns trainable variables is a mixing layer.

- `video_cnn`: a compact (2+1)D network (each block a 1x3x3 spatial then a
  3x1x1 temporal convolution, as in R(2+1)D) or, with `factorised=False`, a
  plain 3x3x3 3D network; trained from scratch.
- `frame_encoder`: any Keras 2D image backbone applied to every frame
  (`TimeDistributed`), then temporal pooling over the frames: a
  `keras.applications` model by name (``weights=None`` offline, or
  ``"imagenet"`` where the weights are available) or the project's
  `small_cnn`.

Both start with `TemporalCrop`: a random window of `clip_length` frames at
each training step (random temporal crop), the centre window at inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from gradmix_tf.networks.trunks import small_cnn


@keras.saving.register_keras_serializable(package="gradmix_tf")
class TemporalCrop(keras.layers.Layer):
    """Crops `[B, T, ...]` clips to `length` frames: random start in training, centre otherwise.

    Args:
        length: frames kept; None or >= T keeps every frame.
        seed: seed of the random starts (one start per clip).

    Example:

    >>> crop = TemporalCrop(4)
    >>> crop(keras.ops.zeros((2, 6, 8, 8, 3))).shape
    TensorShape([2, 4, 8, 8, 3])
    """

    def __init__(self, length: int | None, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.length = length
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, clips, training=False):
        frames = clips.shape[1]
        if self.length is None or (frames is not None and frames <= self.length):
            return clips
        num_frames = tf.shape(clips)[1]
        last_start = num_frames - self.length
        if training:
            batch = tf.shape(clips)[0]
            starts = keras.random.randint([batch], 0, last_start + 1, seed=self.seed_generator)
            indices = starts[:, None] + tf.range(self.length)[None, :]  # [B, length]
            return tf.gather(clips, indices, batch_dims=1)
        start = last_start // 2
        return clips[:, start : start + self.length]

    def compute_output_shape(self, input_shape):
        frames = input_shape[1]
        if self.length is not None and (frames is None or frames > self.length):
            frames = self.length
        return (input_shape[0], frames, *input_shape[2:])

    def get_config(self):
        return {**super().get_config(), "length": self.length, "seed": self.seed}


@keras.saving.register_keras_serializable(package="gradmix_tf")
class SpatialConv(keras.layers.Layer):
    """A 2D convolution applied to every frame of `[B, T, H, W, C]` clips.

    The "(2)" of a (2+1)D block. The frames are folded into the batch and
    convolved with a 2D kernel, which on CPU runs many times faster than the
    equivalent 1xkxk `Conv3D` (especially with strides).
    """

    def __init__(
        self, filters: int, kernel_size: int = 3, strides: int = 1, activation=None, **kwargs
    ):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides = filters, kernel_size, strides
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        k = self.kernel_size
        self.kernel = self.add_weight(
            name="kernel", shape=(k, k, input_shape[-1], self.filters), initializer="glorot_uniform"
        )
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def call(self, clips):
        shape = tf.shape(clips)
        frames = tf.reshape(clips, tf.concat([[-1], shape[2:]], axis=0))  # [B*T, H, W, C]
        frames = tf.nn.conv2d(frames, self.kernel, self.strides, "SAME") + self.bias
        out = tf.shape(frames)
        return self.activation(tf.reshape(frames, tf.concat([shape[:2], out[1:]], axis=0)))

    def compute_output_shape(self, input_shape):
        def reduce(size):
            return None if size is None else -(-size // self.strides)

        return (*input_shape[:2], reduce(input_shape[2]), reduce(input_shape[3]), self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "activation": keras.activations.serialize(self.activation),
        }


@keras.saving.register_keras_serializable(package="gradmix_tf")
class TemporalConv(keras.layers.Layer):
    """A 1D convolution over time at every pixel of `[B, T, H, W, C]` clips ("+1" of (2+1)D)."""

    def __init__(self, filters: int, kernel_size: int = 3, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size = filters, kernel_size
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, 1, input_shape[-1], self.filters),
            initializer="glorot_uniform",
        )
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def call(self, clips):
        shape = tf.shape(clips)  # [B, T, H, W, C]
        pixels = tf.transpose(clips, [0, 2, 3, 1, 4])  # [B, H, W, T, C]
        pixels = tf.reshape(pixels, [-1, shape[1], 1, shape[4]])  # [B*H*W, T, 1, C]
        pixels = tf.nn.conv2d(pixels, self.kernel, 1, "SAME") + self.bias
        pixels = tf.reshape(pixels, [shape[0], shape[2], shape[3], shape[1], self.filters])
        return self.activation(tf.transpose(pixels, [0, 3, 1, 2, 4]))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:4], self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "activation": keras.activations.serialize(self.activation),
        }


@keras.saving.register_keras_serializable(package="gradmix_tf")
class TemporalAverage(keras.layers.Layer):
    """Averages `[B, T, ...]` over time: `[B, ...]`."""

    def call(self, clips):
        return keras.ops.mean(clips, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *input_shape[2:])


def video_cnn(
    filters: Sequence[int] = (16, 32, 64),
    factorised: bool = True,
    temporal_pool: Sequence[bool] | None = None,
    dense_units: int = 128,
    dropout: float = 0.0,
    clip_length: int | None = None,
    stem_stride: int = 1,
    flatten: bool = False,
    name: str = "trunk",
) -> keras.Sequential:
    """A compact (2+1)D or 3D convolutional trunk, trained from scratch.

    Each block is a (2+1)D convolution (a 3x3 spatial convolution on every
    frame, ReLU, a 3-frame temporal convolution at every pixel, ReLU;
    `factorised=True`, `SpatialConv` + `TemporalConv`, fast on CPU) or a
    3x3x3 `Conv3D` with ReLU, then max
    pooling: 2x2 in space, and 2 in time where `temporal_pool` says so
    (default: every block but the first). Then global average pooling over
    time and space (or over time, then flattening: `flatten`), optional
    dropout and a dense feature layer.

    Args:
        filters: channels of each block.
        factorised: (2+1)D blocks; False: plain 3D convolutions.
        temporal_pool: per block, halve the frames too.
        dense_units: width of the feature layer.
        dropout: dropout rate before the feature layer.
        clip_length: frames the network sees (`TemporalCrop`); None: all.
        stem_stride: spatial stride of the first convolution (2 quarters the
            cost of every later layer).
        flatten: average the last feature map over time only and flatten
            it (keeps *where* motion is: needed to tell zooming in from
            zooming out, or the direction of a rotation, whose local motions
            cancel in a global average); False: global average pooling.
        name: the trunk's name.

    Example:

    >>> trunk = video_cnn(filters=(8, 16), dense_units=32, clip_length=8)
    >>> trunk(keras.ops.zeros((2, 10, 32, 32, 3))).shape
    TensorShape([2, 32])
    """
    if temporal_pool is None:
        temporal_pool = [i > 0 for i in range(len(filters))]
    if len(temporal_pool) != len(filters):
        raise ValueError("temporal_pool needs one entry a block (as many as filters).")
    layers = [TemporalCrop(clip_length, name="temporal_crop")]
    for i, (width, pool_time) in enumerate(zip(filters, temporal_pool)):
        stride = (1, stem_stride, stem_stride) if i == 0 else 1
        if factorised:
            layers += [
                SpatialConv(
                    width, 3, stem_stride if i == 0 else 1, "relu", name=f"conv{i + 1}_space"
                ),
                TemporalConv(width, 3, "relu", name=f"conv{i + 1}_time"),
            ]
        else:
            layers.append(
                keras.layers.Conv3D(
                    width, 3, strides=stride, padding="same", activation="relu", name=f"conv{i + 1}"
                )
            )
        pool = (2 if pool_time else 1, 2, 2)
        layers.append(keras.layers.MaxPooling3D(pool, padding="same", name=f"pool{i + 1}"))
    if flatten:
        layers += [TemporalAverage(name="temporal_pool"), keras.layers.Flatten(name="flatten")]
    else:
        layers.append(keras.layers.GlobalAveragePooling3D(name="global_pool"))
    if dropout:
        layers.append(keras.layers.Dropout(dropout, name="dropout"))
    layers.append(keras.layers.Dense(dense_units, activation="relu", name="features"))
    return keras.Sequential(layers, name=name)


def image_backbone(
    backbone: str | keras.Model,
    frame_shape: Sequence[int],
    weights: str | None = None,
    backbone_options: dict | None = None,
) -> keras.Model:
    """A 2D backbone `[B, H, W, C] -> [B, D]` from a name or a Keras model.

    Names: "small_cnn" (the project's digit trunk, averaged) or any
    `keras.applications` constructor ("MobileNetV3Small", "ResNet50", ...),
    built with `include_top=False, pooling="avg"` and `weights` (None: random
    initialisation, offline; "imagenet" or a weights file where available).
    """
    options = dict(backbone_options or {})
    if isinstance(backbone, keras.Model):
        return backbone
    if backbone == "small_cnn":
        return small_cnn(flatten=False, name="backbone", **options)
    constructor = getattr(keras.applications, backbone, None)
    if constructor is None or not callable(constructor):
        raise ValueError(
            f"unknown backbone {backbone!r}: use 'small_cnn', a keras.applications model name "
            "(e.g. 'MobileNetV3Small') or pass a Keras model."
        )
    return constructor(
        input_shape=tuple(frame_shape),
        include_top=False,
        weights=weights,
        pooling="avg",
        **options,
    )


def frame_encoder(
    backbone: str | keras.Model = "small_cnn",
    frame_shape: Sequence[int] = (32, 32, 3),
    weights: str | None = None,
    backbone_options: dict | None = None,
    pixel_scale: float = 1.0,
    temporal_pooling: str = "mean",
    dense_units: int = 128,
    clip_length: int | None = None,
    name: str = "trunk",
) -> keras.Model:
    """A 2D image backbone on every frame, then pooling over time.

    Args:
        backbone: see `image_backbone`; a Keras model must map
            `[B, H, W, C]` to `[B, D]`.
        frame_shape: (H, W, C) of a frame.
        weights: for a `keras.applications` backbone: None (offline) or
            "imagenet" / a weights path.
        backbone_options: extra keyword arguments of the backbone.
        pixel_scale: frames in [0, 1] are multiplied by this first (255 for
            `keras.applications` models that take 0..255 pixels, such as
            MobileNetV3 with its built-in preprocessing).
        temporal_pooling: "mean" or "max" over frames, or "conv" (a 1D
            temporal convolution, then the mean).
        dense_units: width of the feature layer (0: no feature layer).
        clip_length: frames the network sees (`TemporalCrop`); None: all.

    Example:

    >>> trunk = frame_encoder("small_cnn", (32, 32, 3), dense_units=16,
    ...                       backbone_options={"filters": (8,), "dense_units": 8})
    >>> trunk(keras.ops.zeros((2, 4, 32, 32, 3))).shape
    TensorShape([2, 16])
    """
    encoder = image_backbone(backbone, frame_shape, weights, backbone_options)
    clips = keras.Input((None, *frame_shape), name="clips")
    x = TemporalCrop(clip_length, name="temporal_crop")(clips)
    if pixel_scale != 1.0:
        x = keras.layers.Rescaling(pixel_scale, name="pixel_scale")(x)
    x = keras.layers.TimeDistributed(encoder, name="frames")(x)  # [B, T, D]
    if temporal_pooling == "conv":
        width = int(x.shape[-1])
        x = keras.layers.Conv1D(width, 3, padding="same", activation="relu", name="temporal_conv")(
            x
        )
        x = keras.layers.GlobalAveragePooling1D(name="temporal_pool")(x)
    elif temporal_pooling == "mean":
        x = keras.layers.GlobalAveragePooling1D(name="temporal_pool")(x)
    elif temporal_pooling == "max":
        x = keras.layers.GlobalMaxPooling1D(name="temporal_pool")(x)
    else:
        raise ValueError(
            f"temporal_pooling must be 'mean', 'max' or 'conv', got {temporal_pooling!r}."
        )
    if dense_units:
        x = keras.layers.Dense(dense_units, activation="relu", name="features")(x)
    return keras.Model(clips, x, name=name)
