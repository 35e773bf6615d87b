"""Trunks f_theta: any Keras layer mapping a batch of inputs to features.

GradMix is model-agnostic: the trunk's Keras layers that own trainable
variables are the "layers" l of the layer-wise mixing weights. These are the
trunks the experiments use; bring any other Keras model the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras


def small_cnn(
    filters: Sequence[int] = (32, 64, 128),
    dense_units: int = 128,
    dropout: float = 0.0,
    flatten: bool = True,
    batch_norm: bool = False,
    name: str = "trunk",
) -> keras.Sequential:
    """A small convolutional trunk for digit images (e.g. 32x32x3).

    Each block is a 3x3 convolution with ReLU (batch normalisation between them with
    `batch_norm`) and 2x2 max pooling; then
    flattening (or global average pooling), optional dropout and a dense feature layer. With
    the defaults it has 4 mixing layers (3 convolutions + the dense layer).

    Args:
        filters: channels of each convolution block.
        dense_units: width of the feature layer.
        dropout: dropout rate before the feature layer.
        flatten: flatten the last feature map (keeps where a stroke is);
            False averages it instead (fewer parameters, any input size).
        batch_norm: batch normalisation after each convolution (which then has no
            bias), before its ReLU; its scale and offset are mixing layers of their own.
        name: the trunk's name (prefix of its variables' paths).

    Example:

    >>> trunk = small_cnn()
    >>> trunk(keras.ops.zeros((2, 32, 32, 3))).shape
    TensorShape([2, 128])
    """
    layers = []
    for i, width in enumerate(filters):
        if not batch_norm:
            layers.append(
                keras.layers.Conv2D(
                    width, 3, padding="same", activation="relu", name=f"conv{i + 1}"
                )
            )
        else:
            layers.append(
                keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i + 1}")
            )
            layers.append(keras.layers.BatchNormalization(name=f"bn{i + 1}"))
            layers.append(keras.layers.ReLU(name=f"relu{i + 1}"))
        layers.append(keras.layers.MaxPooling2D(2, name=f"pool{i + 1}"))
    if flatten:
        layers.append(keras.layers.Flatten(name="flatten"))
    else:
        layers.append(keras.layers.GlobalAveragePooling2D(name="global_pool"))
    if dropout:
        layers.append(keras.layers.Dropout(dropout, name="dropout"))
    layers.append(keras.layers.Dense(dense_units, activation="relu", name="features"))
    return keras.Sequential(layers, name=name)
