"""Video trunks under GradMix: build, train a step, export, reload and serve a clip."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf import experiment
from gradmix_tf.data.streams import LabelledStream, MultiStreamData, TargetSplit
from gradmix_tf.export.predict import predict_files
from gradmix_tf.export.saved_model import export_target_model, load_exported
from gradmix_tf.networks import TRUNKS, video_trunks
from tests.video_testing import HMDB51_CARTWHEEL, REPO_ROOT, UCF101_CLIPS, shared_clip

CLIP_SHAPE = (6, 32, 32, 3)
TARGET_CLASSES = ("wave", "cartwheel", "run")


def tiny_clip_data(seed: int = 0) -> MultiStreamData:
    rng = np.random.default_rng(seed)

    def clips(n):
        return rng.integers(0, 256, (n, *CLIP_SHAPE), dtype=np.uint8)

    sources = [
        LabelledStream.from_arrays("source_a", clips(8), rng.integers(0, 2, 8), ("a0", "a1")),
        LabelledStream.from_arrays(
            "source_b", clips(8), rng.integers(0, 4, 8), ("b0", "b1", "b2", "b3")
        ),
    ]
    pool_labels = np.repeat(np.arange(3), 3)
    target = TargetSplit.from_arrays(
        clips(9), pool_labels, clips(6), np.arange(6) % 3, TARGET_CLASSES, 1, seed
    )
    return MultiStreamData(sources, target)


def tiny_config(trunk: str, **model):
    from configs import actions

    config = actions.get_config("smoke")
    config.model = {"trunk": trunk, **model}
    config.train.batch_size = 4
    return experiment.resolve_config(config)


TRUNK_CONFIGS = {
    "video_cnn_2plus1d": ("video_cnn", {"filters": (4, 8), "dense_units": 8, "clip_length": 4}),
    "video_cnn_3d": (
        "video_cnn",
        {"filters": (4,), "factorised": False, "dense_units": 8, "clip_length": 4},
    ),
    "frame_encoder_small_cnn": (
        "frame_encoder",
        {
            "backbone": "small_cnn",
            "backbone_options": {"filters": (4,), "dense_units": 8},
            "frame_shape": CLIP_SHAPE[1:],
            "dense_units": 8,
            "clip_length": 4,
            "temporal_pooling": "conv",
        },
    ),
    "frame_encoder_any_keras_model": ("frame_encoder_custom", {}),
}


@pytest.mark.parametrize("name", sorted(TRUNK_CONFIGS))
def test_trunk_trains_under_gradmix_and_exports(name, tmp_path, monkeypatch):
    trunk, options = TRUNK_CONFIGS[name]
    # A user's own 2D model as the backbone, added to the registry of trunks.
    backbone = keras.Sequential(
        [keras.layers.Conv2D(4, 3, strides=2), keras.layers.GlobalAveragePooling2D()]
    )
    custom = functools.partial(
        video_trunks.frame_encoder, backbone, CLIP_SHAPE[1:], dense_units=0, temporal_pooling="max"
    )
    monkeypatch.setitem(TRUNKS, "frame_encoder_custom", custom)
    data = tiny_clip_data()
    config = tiny_config(trunk, **options)
    keras.utils.set_random_seed(0)
    model = experiment.build_model(config, data)
    assert model.mixing_layer_names  # the trunk's layers are mixing layers
    batch = next(iter(data.train_dataset(4, seed=0)))
    before = [v.numpy().copy() for v in model.trunk.trainable_variables]
    history = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    changed = [
        not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trunk.trainable_variables)
    ]
    assert any(changed)

    export_dir = export_target_model(
        model, str(tmp_path / "export"), data.image_shape, data.target_class_names
    )
    serve, metadata = load_exported(export_dir)
    assert metadata["input_shape"] == list(CLIP_SHAPE)
    clip = next(iter(data.test_dataset(2)))[0]
    probabilities = serve(clip).numpy()
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probabilities, model(clip, training=False).numpy(), atol=1e-5)


def test_temporal_crop_random_in_training_centre_at_inference():
    clips = tf.reshape(tf.range(3 * 10, dtype=tf.float32), [3, 10, 1, 1, 1])
    crop = video_trunks.TemporalCrop(4, seed=1)
    centre = crop(clips, training=False)[:, :, 0, 0, 0].numpy()
    np.testing.assert_array_equal(centre[0], [3, 4, 5, 6])
    starts = set()
    for _ in range(20):
        out = crop(clips, training=True)[:, :, 0, 0, 0].numpy()
        first = out[:, 0] - np.arange(3)[:, None].ravel() * 10
        np.testing.assert_array_equal(np.diff(out, axis=1), 1)  # contiguous windows
        assert first.min() >= 0 and first.max() <= 6
        starts.update(first.tolist())
    assert len(starts) > 3
    assert video_trunks.TemporalCrop(None)(clips).shape == clips.shape


def test_2plus1d_layers_equal_the_conv3d_they_factorise():
    x = tf.random.stateless_normal([2, 5, 7, 6, 3], seed=[1, 2])
    spatial = video_trunks.SpatialConv(4, 3, strides=2)
    temporal = video_trunks.TemporalConv(4, 3)
    spatial_out, temporal_out = spatial(x), temporal(x)
    conv = keras.layers.Conv3D(4, (1, 3, 3), strides=(1, 2, 2), padding="same")
    conv.build(x.shape)
    conv.set_weights([spatial.kernel.numpy()[None], spatial.bias.numpy()])
    np.testing.assert_allclose(spatial_out, conv(x), atol=1e-5)
    assert spatial.compute_output_shape(x.shape) == tuple(spatial_out.shape)
    conv_t = keras.layers.Conv3D(4, (3, 1, 1), padding="same")
    conv_t.build(x.shape)
    conv_t.set_weights([temporal.kernel.numpy()[:, :, None], temporal.bias.numpy()])
    np.testing.assert_allclose(temporal_out, conv_t(x), atol=1e-5)


def test_frame_encoder_wraps_a_keras_applications_backbone():
    # Random initialisation (weights=None): no download. Its GradMix step is the same as any
    # trunk's, only slower (100+ mixing layers), so it is tested on the forward pass only.
    trunk = video_trunks.frame_encoder(
        "MobileNetV3Small",
        (32, 32, 3),
        backbone_options={"alpha": 0.75, "minimalistic": True},
        pixel_scale=255.0,
        dense_units=8,
        clip_length=3,
    )
    features = trunk(tf.random.uniform([2, 5, 32, 32, 3]), training=False)
    assert features.shape == (2, 8)
    assert any("expanded_conv" in v.path for v in trunk.trainable_variables)


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="keras.applications"):
        video_trunks.frame_encoder("NoSuchNet", (32, 32, 3))


@pytest.fixture(scope="module")
def video_export(tmp_path_factory) -> str:
    data = tiny_clip_data()
    config = tiny_config("video_cnn", filters=(4,), dense_units=8, clip_length=4)
    model = experiment.build_model(config, data)
    path = str(tmp_path_factory.mktemp("video_export") / "export")
    return export_target_model(model, path, data.image_shape, data.target_class_names)


def test_predict_files_on_real_clips(video_export):
    paths = [shared_clip(HMDB51_CARTWHEEL), shared_clip(UCF101_CLIPS[0])]
    results = predict_files(video_export, paths, top_k=2, num_clips=3, fps=10)
    assert len(results) == 2
    for ranked in results:
        assert [name in TARGET_CLASSES for name, _ in ranked] == [True, True]
        assert ranked[0][1] >= ranked[1][1]


def test_predict_rejects_images_for_a_video_model(video_export, tmp_path):
    image = tmp_path / "frame.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    with pytest.raises(ValueError, match="video model"):
        predict_files(video_export, [str(image)])


@pytest.mark.slow
def test_launch_predict_prints_a_class_for_a_shared_clip(video_export):
    clip = shared_clip(HMDB51_CARTWHEEL)
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    completed = subprocess.run(
        [sys.executable, "-m", "launch.predict", f"--model={video_export}", "--top_k=3", clip],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    line = completed.stdout.strip().splitlines()[-1]
    assert line.startswith(f"{clip}: ")
    assert sum(name in line for name in TARGET_CLASSES) == 3
