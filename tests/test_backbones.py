"""The keras_backbone trunk: keras.applications backbones, their preprocessing, weights
files, frozen layers and the one-line errors; under GradMix, with block mixing groups."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.legacy.saving import legacy_h5_format
from keras.src.utils import file_utils
from PIL import Image

from configs import backbone as backbone_config
from gradmix_tf import experiment
from gradmix_tf.config_checks import check_config
from gradmix_tf.errors import ConfigError
from gradmix_tf.networks import TRUNKS
from gradmix_tf.networks.backbones import (
    BackbonePreprocessing,
    application_backbone,
    keras_backbone,
)
from gradmix_tf.training.gradmix_model import GradMixModel
from tests.workdir_testing import output_of, run_launcher

DIGITS_SHAPE = (32, 32, 3)
TARGET_CLASSES = tuple("0123456789")


def test_mobilenet_v3_small_runs_on_32x32_images_and_ends_in_the_feature_layer():
    trunk = keras_backbone("MobileNetV3Small", input_shape=DIGITS_SHAPE, dense_units=16)
    features = trunk(tf.random.uniform([2, *DIGITS_SHAPE]), training=False)
    assert features.shape == (2, 16)
    assert np.all(features.numpy() >= 0.0)  # the ReLU feature layer, as small_cnn ends
    assert TRUNKS["keras_backbone"] is keras_backbone
    assert trunk.layers[-1].name == "features"
    assert any(v.path.startswith("expanded_conv_3") for v in trunk.trainable_variables)


def test_the_trunk_takes_images_in_0_1_and_feeds_the_backbone_its_own_input():
    """[0, 1] images become what each family's preprocess_input wants from 0..255 pixels."""
    rgb = np.array([[[[0.0, 0.5, 1.0]]]], np.float32)  # one pixel: R=0, G=0.5, B=1
    caffe = BackbonePreprocessing("ResNet50")(rgb).numpy()[0, 0, 0]  # BGR minus the mean
    np.testing.assert_allclose(caffe, [255 - 103.939, 127.5 - 116.779, 0 - 123.68], rtol=1e-5)
    tf_mode = BackbonePreprocessing("ResNet50V2")(rgb).numpy()[0, 0, 0]  # [-1, 1]
    np.testing.assert_allclose(tf_mode, [-1.0, 0.0, 1.0], atol=1e-6)
    # MobileNetV3 rescales inside the model (include_preprocessing): 0..255 pixels go in.
    inside = BackbonePreprocessing("MobileNetV3Small")(rgb).numpy()[0, 0, 0]
    np.testing.assert_allclose(inside, [0.0, 127.5, 255.0], rtol=1e-6)
    grey = BackbonePreprocessing("ResNet50V2")(np.full((1, 2, 2, 1), 0.5, np.float32))
    assert grey.shape == (1, 2, 2, 3)
    trunk = keras_backbone("MobileNetV3Small", input_shape=DIGITS_SHAPE, dense_units=4)
    encoder = trunk.get_layer("MobileNetV3Small")
    assert "rescaling" in [layer.name.rsplit("_", 1)[0] for layer in encoder.layers[:3]]


def test_freeze_layers_takes_the_first_layers_off_the_trained_and_mixed_path():
    full = keras_backbone("MobileNetV3Small", input_shape=DIGITS_SHAPE, dense_units=4)
    frozen = keras_backbone(
        "MobileNetV3Small", input_shape=DIGITS_SHAPE, dense_units=4, freeze_layers=40
    )
    encoder = frozen.get_layer("MobileNetV3Small")
    assert not any(layer.trainable for layer in encoder.layers[:40])
    assert all(layer.trainable for layer in encoder.layers[40:])
    frozen_layers = {layer.name for layer in encoder.layers[:40] if layer.weights}
    assert frozen_layers and len(frozen.trainable_variables) < len(full.trainable_variables)
    model = GradMixModel(frozen, TARGET_CLASSES)
    model.build((None, *DIGITS_SHAPE))
    assert not frozen_layers & set(model.mixing_layer_names)
    assert "conv_1" in model.mixing_layer_names  # a late layer is still mixed


def test_batch_norm_momentum_sets_every_batch_normalisation_of_the_backbone():
    def momenta(trunk):
        encoder = trunk.get_layer("MobileNetV3Small")
        return {
            layer.momentum
            for layer in encoder.layers
            if isinstance(layer, keras.layers.BatchNormalization)
        }

    assert momenta(keras_backbone("MobileNetV3Small", input_shape=DIGITS_SHAPE)) == {0.999}
    trunk = keras_backbone("MobileNetV3Small", input_shape=DIGITS_SHAPE, batch_norm_momentum=0.9)
    assert momenta(trunk) == {0.9}
    # The moving statistics now follow the data within a few training-mode batches.
    images = tf.random.uniform([8, *DIGITS_SHAPE])
    before = np.abs(trunk(images, training=False).numpy()).mean()
    for _ in range(20):
        trunk(images, training=True)
    after = np.abs(trunk(images, training=False).numpy()).mean()
    assert after > 100 * before


def test_a_small_input_is_resized_for_a_backbone_that_needs_a_larger_one():
    with pytest.raises(ConfigError, match=r"at least 75x75.*model\.image_size"):
        keras_backbone("InceptionV3", input_shape=DIGITS_SHAPE)
    trunk = keras_backbone("InceptionV3", input_shape=DIGITS_SHAPE, image_size=75, dense_units=4)
    assert trunk(tf.zeros([1, *DIGITS_SHAPE])).shape == (1, 4)
    assert trunk.get_layer("resize").compute_output_shape((1, 32, 32, 3)) == (1, 75, 75, 3)


@pytest.mark.parametrize("suffix", [".weights.h5", ".h5"])
def test_weights_from_a_local_file_are_loaded(tmp_path, suffix):
    """A Keras 3 `.weights.h5` file, or a legacy `.h5` one (as Keras's ImageNet files are)."""
    reference = application_backbone("MobileNetV3Small", DIGITS_SHAPE)
    rng = np.random.default_rng(0)
    saved = [w + rng.normal(0.0, 0.1, w.shape).astype(w.dtype) for w in reference.get_weights()]
    reference.set_weights(saved)
    path = str(tmp_path / f"mobilenet_v3_small{suffix}")
    if suffix == ".h5":
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    else:
        reference.save_weights(path)

    loaded = keras_backbone("MobileNetV3Small", path, DIGITS_SHAPE, dense_units=4)
    fresh = keras_backbone("MobileNetV3Small", "none", DIGITS_SHAPE, dense_units=4)
    loaded_weights = loaded.get_layer("MobileNetV3Small").get_weights()
    fresh_weights = fresh.get_layer("MobileNetV3Small").get_weights()
    assert len(loaded_weights) == len(saved)
    for got, expected in zip(loaded_weights, saved):
        np.testing.assert_array_equal(got, expected)
    assert any(not np.array_equal(got, new) for got, new in zip(fresh_weights, saved))


def test_imagenet_weights_that_cannot_be_downloaded_are_a_one_line_error(monkeypatch):
    def no_network(fname, origin, **kwargs):  # what keras.utils.get_file raises offline
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] name resolution")

    monkeypatch.setattr(file_utils, "get_file", no_network)
    with pytest.raises(ConfigError, match=r"cannot download its ImageNet weights.*model\.weights"):
        keras_backbone("MobileNetV3Small", "imagenet", DIGITS_SHAPE)


@pytest.mark.parametrize(
    "model, message",
    [
        ({"backbone": "MobileNetV3Smal"}, r"unknown backbone 'MobileNetV3Smal'.*ResNet50.*"),
        ({"weights": "/no/such/file.weights.h5"}, r"weights file not found: /no/such/file"),
        ({"weights": "imagenet.pt"}, r"model.weights must be 'none', 'imagenet' or the path"),
    ],
)
def test_config_mistakes_are_one_line_errors_before_any_data_is_loaded(model, message):
    config = backbone_config.get_config("smoke")
    config.model.update(model)
    with pytest.raises(ConfigError, match=message) as caught:
        check_config(config)
    assert "\n" not in str(caught.value)


@pytest.mark.skipif(importlib.util.find_spec("keras_hub") is not None, reason="keras-hub present")
def test_a_keras_hub_backbone_without_keras_hub_says_how_to_install_it():
    config = backbone_config.get_config("smoke")
    config.model.backbone = "keras_hub:mobilenet_v3_small_050_imagenet"
    with pytest.raises(ConfigError, match=r"not installed: pip install keras-hub") as caught:
        check_config(config)
    assert "\n" not in str(caught.value)


def test_the_backbone_config_builds_a_block_mixed_model():
    """configs/backbone.py: MobileNetV3Small in ~15 block groups instead of ~90 layers."""
    config = experiment.resolve_config(backbone_config.get_config("smoke"))
    data = experiment.build_data(config)
    model = experiment.build_model(config, data)
    assert model.trunk.input_shape == (None, *data.image_shape)
    groups = model.mixing_layer_names
    assert 10 <= len(groups) <= 40, groups
    assert {"conv", "expanded_conv", "expanded_conv_10", "conv_1", "features"} <= set(groups)
    assert groups[-1].endswith("head_target")
    layers = {v.path.rsplit("/", 1)[0] for v in model.path_variables}
    assert len(layers) > 80  # what layer_groups="layer" would mix
    assert model.mixing_weights.shape == (len(model.stream_names), len(groups))
    # Its training step (tracing ~140 variables x 4 streams takes ~40 s on a CPU) runs in
    # the slow end-to-end test below and in tests/test_groups.py on a small trunk.
    keras.backend.clear_session()


@pytest.mark.slow  # two launcher processes; tracing the MobileNetV3 step alone takes ~40 s
def test_train_then_predict_with_the_backbone_config(tmp_path):
    workdir = str(tmp_path / "run")
    completed = run_launcher(
        "launch.train", "--config=configs/backbone.py:smoke", f"--workdir={workdir}"
    )
    assert completed.returncode == 0, output_of(completed)
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    assert results["steps"] == backbone_config.get_config("smoke").train.steps
    assert 0.0 <= results["target_test_accuracy"] <= 1.0
    with np.load(os.path.join(workdir, "mixing_weights.npz")) as history:
        layer_names = history["layer_names"].tolist()
        stream_names = history["stream_names"].tolist()
        last = history["weights"][-1]
    assert 10 <= len(layer_names) <= 40 and "expanded_conv_3" in layer_names
    assert last.shape == (len(stream_names), len(layer_names))
    for s, stream in enumerate(stream_names):  # the same groups, in order, in results.json
        per_group = results["mixing_weights_per_layer"][stream]
        assert list(per_group) == [name.split("/", 1)[-1] for name in layer_names]
        np.testing.assert_allclose(list(per_group.values()), last[s], atol=1e-6)

    image = str(tmp_path / "digit.png")
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels, mode="RGB").save(image)
    completed = run_launcher("launch.predict", f"--model={workdir}/export", "--top_k=2", image)
    assert completed.returncode == 0, output_of(completed)
    (line,) = completed.stdout.strip().splitlines()
    assert line.startswith(f"{image}: ")
    classes = [part.split(" (")[0] for part in line.split(": ", 1)[1].split(", ")]
    assert len(classes) == 2 and set(classes) <= set(TARGET_CLASSES)


def test_a_keras_hub_preset_is_wired_as_its_converter_then_its_backbone(monkeypatch):
    """keras-hub itself is not installed here: a stand-in module with its two entry points
    (`Backbone.from_preset`, `ImageConverter.from_preset`) checks the trunk's wiring."""
    calls = []

    def backbone_from_preset(preset, load_weights=True):
        calls.append(("backbone", preset, load_weights))
        images = keras.Input((None, None, 3))
        return keras.Model(images, keras.layers.Conv2D(5, 3, name="hub_conv")(images))

    def converter_from_preset(preset):
        calls.append(("converter", preset))
        return keras.layers.Rescaling(1.0 / 255.0, name="converter")

    keras_hub = types.SimpleNamespace(
        models=types.SimpleNamespace(
            Backbone=types.SimpleNamespace(from_preset=backbone_from_preset)
        ),
        layers=types.SimpleNamespace(
            ImageConverter=types.SimpleNamespace(from_preset=converter_from_preset)
        ),
    )
    monkeypatch.setitem(sys.modules, "keras_hub", keras_hub)
    trunk = keras_backbone("keras_hub:tiny_preset", "imagenet", DIGITS_SHAPE, dense_units=4)
    assert calls == [("backbone", "tiny_preset", True), ("converter", "tiny_preset")]
    assert trunk(tf.ones([2, *DIGITS_SHAPE])).shape == (2, 4)
    # [0, 1] images reach the converter as 0..255 pixels (it scales them back here).
    to_converter = keras.Model(trunk.input, trunk.get_layer("converter").output)
    np.testing.assert_allclose(to_converter(tf.ones([1, *DIGITS_SHAPE])), 1.0, rtol=1e-6)
    with pytest.raises(ConfigError, match="'none' or 'imagenet'"):
        keras_backbone("keras_hub:tiny_preset", "/some/file.weights.h5", DIGITS_SHAPE)
