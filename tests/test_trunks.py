"""The digits trunk, `small_cnn`, with and without batch normalisation."""

from __future__ import annotations

import keras
import numpy as np

from configs import digits as digits_config
from gradmix_tf import experiment
from gradmix_tf.networks.trunks import small_cnn


def test_batch_norm_sits_between_each_convolution_and_its_relu():
    trunk = small_cnn(filters=(4, 8), dense_units=6, batch_norm=True)
    trunk.build((None, 16, 16, 3))
    names = [layer.name for layer in trunk.layers]
    assert names[:8] == ["conv1", "bn1", "relu1", "pool1", "conv2", "bn2", "relu2", "pool2"]
    assert trunk.get_layer("conv1").bias is None  # the batch norm's offset replaces it
    assert trunk.get_layer("conv1").activation is keras.activations.linear
    # In training mode each channel leaves the batch normalisation centred.
    x = np.random.default_rng(0).normal(size=(5, 16, 16, 3)).astype("float32")
    normalised = keras.Sequential(trunk.layers[:2])(x, training=True)
    np.testing.assert_allclose(np.mean(normalised, axis=(0, 1, 2)), 0.0, atol=1e-4)


def test_without_batch_norm_the_trunk_is_as_before():
    trunk = small_cnn(filters=(4, 8), dense_units=6)
    trunk.build((None, 16, 16, 3))
    assert [layer.name for layer in trunk.layers][:4] == ["conv1", "pool1", "conv2", "pool2"]
    assert trunk.get_layer("conv1").activation is keras.activations.relu


def test_the_config_field_builds_batch_norm_layers_as_mixing_layers():
    config = digits_config.get_config("smoke")
    config.model.batch_norm = True
    config = experiment.resolve_config(config)
    model = experiment.build_model(config, experiment.build_data(config))
    layers = {v.path.split("/")[-2] for v in model.path_variables}
    assert {"conv1", "bn1", "conv2", "bn2"} <= layers
    assert model.num_mixing_layers == len(config.model.filters) * 2 + 2  # + features, head
