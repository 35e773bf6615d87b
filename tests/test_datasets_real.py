"""The builders on real files (../shared/data/digits, written in each builder's manual
format first) and task `digits_mnistm` built from them. Skipped when the files are absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from gradmix_tf import datasets
from gradmix_tf.datasets import manual_files
from gradmix_tf.tasks import digits_mnistm, load_task

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "digits"
USPS_NPZ = SHARED / "usps_uint8.npz"
MNISTM_NPZ = SHARED / "mnistm_test1000_uint8.npz"

pytestmark = [
    pytest.mark.skipif(
        not (USPS_NPZ.exists() and MNISTM_NPZ.exists()),
        reason=f"real digit files not found in {SHARED}",
    ),
    pytest.mark.slow,  # preparing the real USPS (9,298 images) takes ~10-20 s once
]


def _arrays(stream) -> tuple[np.ndarray, np.ndarray]:
    images, second = [], []
    for x, y in stream.dataset.batch(1024).as_numpy_iterator():
        images.append(x)
        second.append(y)
    return np.concatenate(images), np.concatenate(second)


def _keys(images) -> set[bytes]:
    return {np.round(image * 255).astype(np.uint8).tobytes() for image in images}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A manual dir holding usps/ (usps.h5) and mnist_m/ (test files), and a data dir."""
    root = tmp_path_factory.mktemp("real_digits")
    manual = root / "manual"
    manual_files.write_from_npz("usps", os.fspath(USPS_NPZ), os.fspath(manual / "usps"))
    manual_files.write_from_npz("mnist_m", os.fspath(MNISTM_NPZ), os.fspath(manual / "mnist_m"))
    return {"manual_dir": os.fspath(manual), "data_dir": os.fspath(root / "data")}


@pytest.fixture(scope="module")
def usps(dirs):
    return np.load(USPS_NPZ)


@pytest.fixture(scope="module")
def mnistm(dirs):
    return np.load(MNISTM_NPZ)


def test_usps_from_real_h5(dirs, usps):
    assert datasets.prepare("usps", **dirs) == {"train": 7291, "test": 2007}
    for split in ("train", "test"):
        examples = datasets.load_examples("usps", split, data_dir=dirs["data_dir"])
        assert examples.images.shape == (len(usps[f"y_{split}"]), 16, 16, 1)
        assert examples.labels.min() == 0 and examples.labels.max() == 9
        np.testing.assert_array_equal(examples.labels, usps[f"y_{split}"])
        np.testing.assert_array_equal(examples.images[..., 0], usps[f"x_{split}"])
    # A few pixels by hand: row 0 of train, the centre of the image.
    examples = datasets.load_examples("usps", "train", data_dir=dirs["data_dir"])
    assert examples.images[0, 8, 8, 0] == usps["x_train"][0, 8, 8]
    assert examples.ids[0] == "train_00000" and examples.ids[-1] == "train_07290"


def test_usps_from_real_libsvm_file(tmp_path, usps):
    manual = os.fspath(tmp_path / "manual")
    manual_files.write_usps_libsvm(manual, "test", usps["x_test"], usps["y_test"])
    sizes = datasets.prepare(
        "usps", data_dir=tmp_path / "data", manual_dir=manual, verify_checksums=False
    )
    assert sizes == {"test": 2007}
    examples = datasets.load_examples(
        "usps", "test", data_dir=tmp_path / "data", verify_checksums=False
    )
    np.testing.assert_array_equal(examples.images[..., 0], usps["x_test"])
    np.testing.assert_array_equal(examples.labels, usps["y_test"])


def test_mnist_m_from_real_png_test_files(dirs, mnistm):
    assert datasets.prepare("mnist_m", **dirs) == {"test": 1000}
    examples = datasets.load_examples("mnist_m", "test", data_dir=dirs["data_dir"])
    assert examples.images.shape == (1000, 32, 32, 3)
    assert sorted(set(examples.labels.tolist())) == list(range(10))
    np.testing.assert_array_equal(examples.labels, mnistm["y"])
    np.testing.assert_array_equal(examples.images, mnistm["x"])
    assert examples.ids[7] == "00000007.png"
    assert tuple(examples.images[7, 16, 16]) == tuple(mnistm["x"][7, 16, 16])


@pytest.fixture(scope="module")
def task(dirs):
    return load_task("digits_mnistm", seed=0, shots_per_class=10, **dirs)


def test_digits_mnistm_sizes_labels_and_names(task):
    mnist, usps = task.sources
    assert (mnist.name, usps.name) == ("mnist_0_4", "usps_5_9")
    assert (mnist.size, usps.size) == (2500, 3051)
    assert mnist.class_names == ("0", "1", "2", "3", "4")
    assert usps.class_names == ("5", "6", "7", "8", "9")
    assert task.image_shape == digits_mnistm.IMAGE_SHAPE
    assert task.target.labelled.name == "mnist_m"
    assert (task.target.labelled.size, task.target.unlabelled.size, task.target.test.size) == (
        100,
        450,
        450,
    )
    for stream, classes in ((mnist, 5), (usps, 5), (task.target.labelled, 10)):
        images, labels = _arrays(stream)
        assert images.min() >= 0.0 and images.max() <= 1.0
        assert np.bincount(labels, minlength=classes).min() > 0 and labels.max() == classes - 1
    _, labelled = _arrays(task.target.labelled)
    assert np.bincount(labelled).tolist() == [10] * 10
    _, test = _arrays(task.target.test)
    assert np.bincount(test).tolist() == [45] * 10


def test_digits_mnistm_usps_source_is_the_usps_digits_5_to_9(task, usps):
    images, labels = _arrays(task.sources[1])
    keep = usps["y_train"] >= 5
    np.testing.assert_array_equal(labels, usps["y_train"][keep] - 5)
    # Resized from 16x16: a flat region stays flat, so compare the mean brightness.
    np.testing.assert_allclose(
        images.mean(axis=(1, 2, 3)), usps["x_train"][keep].mean(axis=(1, 2)) / 255.0, atol=0.03
    )


def test_digits_mnistm_parts_are_disjoint_and_cover_the_1000_images(task, mnistm):
    parts = [
        _keys(_arrays(task.target.labelled)[0]),
        _keys(_arrays(task.target.unlabelled)[0]),
        _keys(_arrays(task.target.test)[0]),
    ]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert parts[0] | parts[1] | parts[2] == {image.tobytes() for image in mnistm["x"]}


def test_digits_mnistm_seed_changes_only_the_labelled_draw(dirs, task):
    again = load_task("digits_mnistm", seed=0, shots_per_class=10, **dirs)
    other = load_task("digits_mnistm", seed=1, shots_per_class=10, **dirs)
    np.testing.assert_array_equal(
        _arrays(again.target.labelled)[0], _arrays(task.target.labelled)[0]
    )
    np.testing.assert_array_equal(_arrays(other.target.test)[0], _arrays(task.target.test)[0])
    assert _keys(_arrays(other.target.labelled)[0]) != _keys(_arrays(task.target.labelled)[0])
    for a, b in zip(other.sources, task.sources):
        np.testing.assert_array_equal(_arrays(a)[0], _arrays(b)[0])


def test_digits_mnistm_max_per_class_and_oracle(dirs):
    small = load_task("digits_mnistm", seed=0, shots_per_class=2, max_per_class=5, **dirs)
    assert [s.size for s in small.sources] == [25, 25]
    assert (small.target.labelled.size, small.target.unlabelled.size, small.target.test.size) == (
        20,
        30,
        50,
    )
    oracle = load_task("digits_mnistm", seed=0, shots_per_class=None, **dirs)
    assert oracle.target.labelled.size == 550 and oracle.target.unlabelled is None


def test_digits_mnistm_with_harmful_sources(dirs, task):
    """The development tasks with harm: the same two sources and target, then the extras."""
    harmed = load_task(
        "digits_mnistm",
        seed=0,
        shots_per_class=10,
        extra_sources=("random_labels", "photo_patches"),
        **dirs,
    )
    names = [s.name for s in harmed.sources]
    assert names == ["mnist_0_4", "usps_5_9", "mnist_5_9_random_labels", "photo_patches"]
    assert harmed.image_shape == task.image_shape
    np.testing.assert_array_equal(
        _arrays(harmed.target.labelled)[0], _arrays(task.target.labelled)[0]
    )
