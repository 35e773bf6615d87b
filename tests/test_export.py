"""Tests of the SavedModel export and of prediction on image files (`gradmix_tf.export`)."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from gradmix_tf.export import predict as predict_module
from gradmix_tf.export.predict import predict_files, read_image
from gradmix_tf.export.saved_model import METADATA_FILE, export_target_model, load_exported
from gradmix_tf.training.gradmix_model import GradMixModel


def _load_image(path, input_shape):
    """The pixels of an image file as the predictor reads them."""
    return read_image(path, input_shape)[0]


IMAGE_SHAPE = (8, 8, 1)
TARGET_CLASSES = ("a", "b", "c")
SOURCE_CLASSES = ("x", "y")  # a label space with a head of its own (not exported)
NUM_UNLABELLED = 5  # adds the pseudo-label table (training state, not exported)


def tiny_model() -> GradMixModel:
    """A built, compiled GradMixModel: Conv2D(4) + Flatten + Dense(8) on 8x8x1 images."""
    keras.utils.set_random_seed(0)
    trunk = keras.Sequential(
        [
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(8, activation="relu", name="dense"),
        ],
        name="trunk",
    )
    model = GradMixModel(trunk, TARGET_CLASSES, [SOURCE_CLASSES], num_unlabelled=NUM_UNLABELLED)
    model.build((None, *IMAGE_SHAPE))
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model


def random_images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, *IMAGE_SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, export path, the loaded SavedModel, kept alive for the module)."""
    model = tiny_model()
    path = str(tmp_path_factory.mktemp("export") / "export")
    assert export_target_model(model, path, IMAGE_SHAPE, TARGET_CLASSES) == path
    return model, path, tf.saved_model.load(path)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """A grey 20x30 PNG and a colour 13x7 JPEG (sizes other than the model's)."""
    directory = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    png = str(directory / "grey.png")
    Image.fromarray(rng.integers(0, 256, (30, 20), dtype=np.uint8), mode="L").save(png)
    jpeg = str(directory / "colour.jpg")
    Image.fromarray(rng.integers(0, 256, (7, 13, 3), dtype=np.uint8), mode="RGB").save(jpeg)
    return png, jpeg


def test_serve_equals_predict(exported):
    model, _, loaded = exported
    x = random_images(5)
    np.testing.assert_allclose(
        loaded.serve(tf.constant(x)).numpy(), model.predict(x, verbose=0), atol=1e-6
    )


def test_serve_takes_any_batch_size_of_the_input_shape(exported):
    _, _, loaded = exported
    assert loaded.serve(tf.zeros((1, *IMAGE_SHAPE))).shape == (1, len(TARGET_CLASSES))
    with pytest.raises((TypeError, ValueError)):
        loaded.serve(tf.zeros((1, 4, 4, 1)))


def test_metadata_records_class_names_and_input_shape(exported):
    _, path, _ = exported
    assert os.path.exists(os.path.join(path, "saved_model.pb"))
    with open(os.path.join(path, METADATA_FILE)) as f:
        metadata = json.load(f)
    assert metadata == {
        "class_names": list(TARGET_CLASSES),
        "input_shape": list(IMAGE_SHAPE),
        "input_range": [0.0, 1.0],
        "endpoint": "serve",
    }


def test_export_replaces_an_existing_directory(tmp_path):
    path = tmp_path / "export"
    path.mkdir()
    (path / "stale.txt").write_text("from an older export")
    export_target_model(tiny_model(), str(path), IMAGE_SHAPE, TARGET_CLASSES)
    assert not (path / "stale.txt").exists()
    assert (path / METADATA_FILE).exists()


def test_export_holds_only_the_inference_variables(exported):
    model, _, loaded = exported
    inference = {v.path for v in model.trunk.variables + model.heads[0].variables}
    assert {v.name.split(":")[0] for v in loaded.variables} == inference


def test_load_exported_on_another_directory_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a gradmix-tf export.*Pass the export/"):
        load_exported(str(tmp_path))


def test_load_exported_serve_equals_predict(exported):
    model, path, _ = exported
    serve, metadata = load_exported(path)
    assert metadata["class_names"] == list(TARGET_CLASSES)
    x = random_images(3, seed=2)
    probabilities = serve(x).numpy()
    np.testing.assert_allclose(probabilities, model.predict(x, verbose=0), atol=1e-6)


def test_load_image_resizes_and_converts_grey_to_rgb(tmp_path):
    path = str(tmp_path / "grey.png")
    Image.fromarray(np.full((30, 20), 128, np.uint8), mode="L").save(path)
    pixels = _load_image(path, (8, 8, 3))
    assert pixels.shape == (8, 8, 3)
    assert pixels.dtype == np.float32
    np.testing.assert_allclose(pixels, np.full((8, 8, 3), 128 / 255), atol=1e-6)


def test_load_image_converts_rgb_to_grey(tmp_path):
    path = str(tmp_path / "red.png")
    Image.fromarray(np.tile(np.array([255, 0, 0], np.uint8), (5, 9, 1)), mode="RGB").save(path)
    pixels = _load_image(path, IMAGE_SHAPE)
    assert pixels.shape == IMAGE_SHAPE
    # PIL's luma: L = 0.299 R + 0.587 G + 0.114 B -> 76 for pure red.
    np.testing.assert_allclose(pixels, np.full(IMAGE_SHAPE, 76 / 255), atol=1e-6)


def test_load_image_reads_jpeg(image_files):
    _, jpeg = image_files
    pixels = _load_image(jpeg, IMAGE_SHAPE)
    assert pixels.shape == IMAGE_SHAPE
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0


def test_load_image_errors_name_the_file(tmp_path):
    missing = str(tmp_path / "missing.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        _load_image(missing, IMAGE_SHAPE)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(np.random.default_rng(0).bytes(64))
    with pytest.raises(ValueError, match=r"cannot read .*corrupt.png as an image"):
        _load_image(str(corrupt), IMAGE_SHAPE)


def _check_predictions(predictions, loaded, paths, top_k):
    """Each file's top-k equals serve on the file's resized image, ranked."""
    assert len(predictions) == len(paths)
    images = np.stack([_load_image(p, IMAGE_SHAPE) for p in paths])
    probabilities = loaded.serve(tf.constant(images)).numpy()
    for classes, row in zip(predictions, probabilities):
        assert len(classes) == top_k
        names = [name for name, _ in classes]
        values = np.array([probability for _, probability in classes])
        assert set(names) <= set(TARGET_CLASSES)
        assert np.all((values >= 0) & (values <= 1))
        assert values.sum() <= 1 + 1e-6
        assert np.all(np.diff(values) <= 0)  # best first
        expected = np.argsort(-row)[:top_k]
        assert names == [TARGET_CLASSES[i] for i in expected]
        np.testing.assert_allclose(values, row[expected], atol=1e-6)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_predict_files_ranks_serve_probabilities(exported, image_files, monkeypatch, top_k):
    """predict_files's own logic, with load_exported pinned to a live SavedModel."""
    _, path, loaded = exported
    with open(os.path.join(path, METADATA_FILE)) as f:
        metadata = json.load(f)
    monkeypatch.setattr(predict_module, "load_exported", lambda _: (loaded.serve, metadata))
    predictions = predict_files(path, list(image_files), top_k=top_k)
    _check_predictions(predictions, loaded, image_files, top_k)
    if top_k == len(TARGET_CLASSES):
        for classes in predictions:
            assert sum(p for _, p in classes) == pytest.approx(1.0, abs=1e-5)


def test_predict_files_on_png_and_jpeg(exported, image_files):
    _, path, loaded = exported
    predictions = predict_files(path, list(image_files), top_k=2)
    _check_predictions(predictions, loaded, image_files, top_k=2)


def test_predict_files_without_files_raises(exported):
    _, path, _ = exported
    with pytest.raises(ValueError, match="no image files"):
        predict_files(path, [])


def test_the_export_of_a_real_run_ranks_its_classes(smoke_workdir, image_files):
    """The export of the session's smoke run (digits, 32x32 colour) on other-sized files."""
    path = os.path.join(smoke_workdir, "export")
    serve, metadata = load_exported(path)
    assert len(metadata["class_names"]) == 10
    predictions = predict_files(path, list(image_files), top_k=3)
    images = np.stack([_load_image(p, tuple(metadata["input_shape"])) for p in image_files])
    probabilities = serve(images).numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    for classes, row in zip(predictions, probabilities):
        expected = np.argsort(-row)[:3]
        assert [name for name, _ in classes] == [metadata["class_names"][i] for i in expected]
        np.testing.assert_allclose([p for _, p in classes], row[expected], atol=1e-6)
