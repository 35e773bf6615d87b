"""Tests of `gradmix_tf.datasets`: builders from tiny generated files, TFDS datasets through
`tfds.testing.mock_data`, the stream-making pipeline, k-shot splits and failing fast."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from gradmix_tf import datasets
from gradmix_tf.data.streams import DataError
from gradmix_tf.datasets import loading, manual_files, preparation
from gradmix_tf.datasets.manual_builder import ChecksumError

REPO = Path(__file__).resolve().parents[1]


def _arrays(stream) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels or ids) of a whole stream, in its order."""
    images, second = [], []
    for x, y in stream.dataset.batch(1024).as_numpy_iterator():
        images.append(x)
        second.append(y)
    return np.concatenate(images), np.concatenate(second)


def _numbered_images(count: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random uint8 images whose first two pixels spell their index (so each is unique)."""
    images = np.random.default_rng(seed).integers(0, 256, size=(count, *shape), dtype=np.uint8)
    flat = images.reshape(count, -1)
    flat[:, 0] = np.arange(count) % 256
    flat[:, 1] = np.arange(count) // 256
    return images


def _fake_prepared(name: str, data_dir: Path) -> None:
    """Writes a TFDS dataset's metadata (from its code) so that `mock_data` serves it."""
    builder = tfds.builder(name, data_dir=os.fspath(data_dir))
    builder.data_path.mkdir(parents=True, exist_ok=True)
    builder.info.write_to_directory(builder.data_path)


@pytest.fixture
def syn_digits_files(tmp_path):
    """Tiny synth_train/test_32x32.mat files: 12 a class in train (120), 3 a class in test."""
    manual = tmp_path / "manual"
    train_labels = np.repeat(np.arange(10), 12)
    test_labels = np.repeat(np.arange(10), 3)
    train = _numbered_images(len(train_labels), (32, 32, 3), seed=1)
    test = _numbered_images(len(test_labels), (32, 32, 3), seed=2)
    manual_files.write_syn_digits_mat(os.fspath(manual), "train", train, train_labels)
    manual_files.write_syn_digits_mat(os.fspath(manual), "test", test, test_labels)
    return manual, (train, train_labels), (test, test_labels)


def test_syn_digits_builder_from_generated_mat_files(tmp_path, syn_digits_files):
    manual, (train, train_labels), (test, test_labels) = syn_digits_files
    sizes = datasets.prepare("syn_digits", data_dir=tmp_path / "data", manual_dir=manual)
    assert sizes == {"train": 120, "test": 30}
    examples = datasets.load_examples("syn_digits", "train", data_dir=tmp_path / "data")
    assert examples.images.shape == (120, 32, 32, 3) and examples.images.dtype == np.uint8
    np.testing.assert_array_equal(examples.images, train)  # id order is the file's order
    np.testing.assert_array_equal(examples.labels, train_labels)
    assert examples.class_names == tuple(str(d) for d in range(10))
    test_examples = datasets.load_examples("syn_digits", "test", data_dir=tmp_path / "data")
    np.testing.assert_array_equal(test_examples.images, test)


def test_syn_digits_label_10_means_0(tmp_path):
    from scipy import io as scipy_io

    manual = tmp_path / "manual"
    manual.mkdir()
    images = _numbered_images(4, (32, 32, 3))
    scipy_io.savemat(
        manual / "synth_test_32x32.mat",
        {"X": np.moveaxis(images, 0, -1), "y": np.array([[10], [1], [10], [9]])},
    )
    datasets.prepare("syn_digits", data_dir=tmp_path / "data", manual_dir=manual)
    labels = datasets.load_examples("syn_digits", "test", data_dir=tmp_path / "data").labels
    np.testing.assert_array_equal(labels, [0, 1, 0, 9])


def test_usps_libsvm_files_round_trip_and_checksum(tmp_path):
    manual = tmp_path / "manual"
    images = _numbered_images(25, (16, 16))
    labels = np.arange(25) % 10
    manual_files.write_usps_libsvm(os.fspath(manual), "train", images, labels)
    manual_files.write_usps_libsvm(os.fspath(manual), "test", images[:7], labels[:7])
    # Written from arrays, the files are not LIBSVM's release: the MD5 check says so.
    with pytest.raises(ChecksumError, match=r"usps\.(t\.)?bz2 has MD5 .* released file has"):
        datasets.prepare("usps", data_dir=tmp_path / "checked", manual_dir=manual)
    sizes = datasets.prepare(
        "usps", data_dir=tmp_path / "data", manual_dir=manual, verify_checksums=False
    )
    assert sizes == {"train": 25, "test": 7}
    examples = datasets.load_examples(
        "usps", "train", data_dir=tmp_path / "data", verify_checksums=False
    )
    assert examples.images.shape == (25, 16, 16, 1)
    np.testing.assert_array_equal(examples.images[..., 0], images)
    np.testing.assert_array_equal(examples.labels, labels)


def test_mnist_m_partial_release_gives_only_its_splits(tmp_path):
    manual = tmp_path / "manual"
    images = _numbered_images(12, (32, 32, 3))
    manual_files.write_mnist_m(os.fspath(manual), "test", images, np.arange(12) % 10)
    assert datasets.prepare("mnist_m", data_dir=tmp_path / "data", manual_dir=manual) == {
        "test": 12
    }
    examples = datasets.load_examples("mnist_m", "test", data_dir=tmp_path / "data")
    np.testing.assert_array_equal(examples.images, images)
    assert examples.ids[:2].tolist() == ["00000000.png", "00000001.png"]
    with pytest.raises(Exception, match="train"):
        datasets.load_examples("mnist_m", "train", data_dir=tmp_path / "data")


def test_mnist_m_labels_file_naming_a_missing_png_is_an_error(tmp_path):
    manual = tmp_path / "manual"
    manual_files.write_mnist_m(
        os.fspath(manual), "test", _numbered_images(3, (32, 32, 3)), [1, 2, 3]
    )
    os.remove(manual / "mnist_m_test" / "00000001.png")
    with pytest.raises(Exception, match=r"00000001\.png"):
        datasets.prepare("mnist_m", data_dir=tmp_path / "data", manual_dir=manual)


def test_manual_dir_may_hold_a_folder_a_dataset(tmp_path, syn_digits_files):
    manual, *_ = syn_digits_files
    shared = tmp_path / "several"
    shared.mkdir()
    os.rename(manual, shared / "syn_digits")
    builder = datasets.prepared_builder("syn_digits", data_dir=tmp_path / "data", manual_dir=shared)
    assert builder.is_prepared()


# Failing fast ---------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["missing", "empty", "other files"])
def test_missing_manual_files_fail_in_seconds_naming_files_and_dir(tmp_path, state):
    manual = tmp_path / "manual"
    if state != "missing":
        manual.mkdir()
    if state == "other files":
        (manual / "README.txt").write_text("not usps")
    start = time.monotonic()
    with pytest.raises(datasets.DatasetNotReadyError) as error:
        datasets.prepared_builder("usps", data_dir=tmp_path / "data", manual_dir=manual)
    assert time.monotonic() - start < 10
    message = str(error.value)
    for name in ("usps.h5", "usps.bz2", "usps.t.bz2", os.fspath(manual), "launch.prepare"):
        assert name in message
    assert not (tmp_path / "data" / "usps" / "1.0.0").exists()


def test_not_prepared_downloadable_dataset_without_download_fails_fast(tmp_path):
    start = time.monotonic()
    with pytest.raises(datasets.DatasetNotReadyError) as error:
        datasets.prepared_builder("mnist", data_dir=tmp_path)
    assert time.monotonic() - start < 10
    message = str(error.value)
    assert os.fspath(tmp_path / "mnist" / "3.0.1") in message
    assert "launch.prepare --dataset=mnist --download" in message


def test_download_without_network_fails_fast(tmp_path, monkeypatch):
    probed = []

    def no_network(host=preparation.NETWORK_PROBE_HOST, timeout=5.0):
        probed.append(host)
        return False

    monkeypatch.setattr(preparation, "network_reachable", no_network)
    start = time.monotonic()
    with pytest.raises(datasets.DatasetNotReadyError, match="network does not answer"):
        datasets.prepared_builder("svhn_cropped", data_dir=tmp_path, download=True)
    assert time.monotonic() - start < 10
    assert probed == [preparation.NETWORK_PROBE_HOST]


def test_network_probe_answers_within_its_timeout():
    start = time.monotonic()
    result = preparation.network_reachable(("storage.googleapis.com", 443), timeout=2.0)
    assert isinstance(result, bool)
    assert time.monotonic() - start < 4


@pytest.mark.parametrize("name", ["ucf101/ucf101_1", "domainnet/real"])
def test_builders_with_configs_fail_fast_too(tmp_path, name):
    start = time.monotonic()
    with pytest.raises(datasets.DatasetNotReadyError, match=name.split("/")[0]):
        datasets.prepared_builder(name, data_dir=tmp_path)
    assert time.monotonic() - start < 15


def test_unknown_names_suggest_close_ones(tmp_path):
    with pytest.raises(datasets.DatasetNotReadyError, match="'mnist'"):
        datasets.prepared_builder("mnsit", data_dir=tmp_path)
    with pytest.raises(datasets.DatasetNotReadyError, match="ucf101/no_such_config"):
        datasets.prepared_builder("ucf101/no_such_config", data_dir=tmp_path)


class ToyClips(tfds.core.GeneratorBasedBuilder):
    """A manual-download builder with configs, as the video builders are (`toy_clips/split1`)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="split1"),
        tfds.core.BuilderConfig(name="split2"),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Place clips.npz (frames [N, 2, 8, 8, 3], labels [N]) there."

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "video": tfds.features.Video(shape=(2, 8, 8, 3)),
                    "label": tfds.features.ClassLabel(names=["wave", "cartwheel"]),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        data = np.load(dl_manager.manual_dir / "clips.npz")
        return {"train": self._generate_examples(data["frames"], data["labels"])}

    def _generate_examples(self, frames, labels):
        for i, (clip, label) in enumerate(zip(frames, labels)):
            yield i, {"video": clip, "label": int(label)}


def test_any_registered_builder_with_configs_goes_through_the_same_path(tmp_path):
    manual = tmp_path / "manual"
    with pytest.raises(datasets.DatasetNotReadyError, match="clips.npz"):
        datasets.prepared_builder("toy_clips/split1", data_dir=tmp_path / "data", manual_dir=manual)
    manual.mkdir()
    frames = np.random.default_rng(0).integers(0, 256, size=(4, 2, 8, 8, 3), dtype=np.uint8)
    np.savez(manual / "clips.npz", frames=frames, labels=np.array([0, 1, 1, 0]))
    builder = datasets.prepared_builder(
        "toy_clips/split1", data_dir=tmp_path / "data", manual_dir=manual
    )
    assert builder.is_prepared() and builder.builder_config.name == "split1"
    examples = datasets.load_examples(
        "toy_clips/split1", "train", data_dir=tmp_path / "data", image_key="video"
    )
    assert examples.images.shape == (4, 2, 8, 8, 3)
    assert examples.class_names == ("wave", "cartwheel")
    clips = datasets.convert_images(examples.images, (4, 4, 1))
    assert clips.shape == (4, 2, 4, 4, 1) and clips.dtype == np.float32


def test_task_with_no_data_stops_in_seconds_naming_files(tmp_path):
    from gradmix_tf.tasks import load_task

    start = time.monotonic()
    with pytest.raises(datasets.DatasetNotReadyError) as error:
        load_task(
            "digits_mnistm",
            seed=0,
            shots_per_class=10,
            data_dir=os.fspath(tmp_path / "data"),
            manual_dir=os.fspath(tmp_path / "manual"),
        )
    assert time.monotonic() - start < 10
    assert "usps.h5" in str(error.value) and os.fspath(tmp_path / "manual") in str(error.value)


@pytest.mark.slow  # a fresh process imports TensorFlow: ~10-20 s
def test_train_launcher_with_no_data_stops_within_a_minute(tmp_path):
    env = dict(
        os.environ,
        PYTHONPATH=os.fspath(REPO),
        TF_CPP_MIN_LOG_LEVEL="3",
        GRADMIX_DATA_DIR=os.fspath(tmp_path / "data"),
        GRADMIX_MANUAL_DIR=os.fspath(tmp_path / "nowhere"),
    )
    start = time.monotonic()
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.train",
            "--config=configs/digits_mnistm.py:smoke",
            f"--workdir={tmp_path / 'work'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - start < 60
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr  # a message, not a stack
    assert "error: " in completed.stderr
    assert "usps.h5" in completed.stderr and os.fspath(tmp_path / "nowhere") in completed.stderr


# TFDS datasets through mock_data, end to end through the stream pipeline -----------------


def test_mnist_source_stream_through_mock_data(tmp_path):
    _fake_prepared("mnist", tmp_path)
    with tfds.testing.mock_data(
        num_examples=200, data_dir=os.fspath(tmp_path), policy=tfds.testing.MockPolicy.USE_FILES
    ):
        raw = datasets.load_examples("mnist", "train", data_dir=tmp_path)
        stream = datasets.labelled_stream(
            "mnist",
            "train",
            name="mnist_0_4",
            classes=(0, 1, 2, 3, 4),
            max_per_class=6,
            image_shape=(32, 32, 3),
            resize_method="pad",
            data_dir=tmp_path,
        )
    assert raw.images.shape == (200, 28, 28, 1)
    assert stream.name == "mnist_0_4" and stream.class_names == ("0", "1", "2", "3", "4")
    assert stream.image_shape == (32, 32, 3)
    images, labels = _arrays(stream)
    assert np.bincount(labels, minlength=5).tolist() == [6] * 5
    # The first kept image is the first digit-0 image, padded by 2 and repeated to RGB.
    first = raw.images[np.flatnonzero(raw.labels == 0)[0], :, :, 0] / 255.0
    kept0 = images[np.flatnonzero(labels == 0)[0]]
    np.testing.assert_allclose(kept0[2:30, 2:30, 1], first, atol=1e-6)
    assert kept0[:2].max() == 0 and np.allclose(kept0[..., 0], kept0[..., 2])


def test_svhn_target_split_through_mock_data(tmp_path):
    _fake_prepared("svhn_cropped", tmp_path)
    with tfds.testing.mock_data(
        num_examples=300, data_dir=os.fspath(tmp_path), policy=tfds.testing.MockPolicy.USE_FILES
    ):
        split = datasets.target_split(
            "svhn_cropped",
            shots_per_class=3,
            seed=5,
            test_split=None,
            test_per_class=4,
            image_shape=(28, 28, 1),
            data_dir=tmp_path,
        )
        counts = np.bincount(
            datasets.load_examples("svhn_cropped", "train", data_dir=tmp_path).labels
        )
    assert split.labelled.size == 30 and split.test.size == 40
    assert split.unlabelled.size == 300 - 70
    assert split.labelled.image_shape == (28, 28, 1)
    _, test_labels = _arrays(split.test)
    assert np.bincount(test_labels).tolist() == [4] * 10
    _, true = _arrays(split.labelled)
    assert np.bincount(true).tolist() == [3] * 10
    np.testing.assert_array_equal(
        np.bincount(split.unlabelled.true_labels, minlength=10), counts - 7
    )


def test_domainnet_images_of_different_sizes_through_mock_data(tmp_path):
    _fake_prepared("domainnet/real", tmp_path)
    with tfds.testing.mock_data(
        num_examples=80, data_dir=os.fspath(tmp_path), policy=tfds.testing.MockPolicy.USE_FILES
    ):
        raw = datasets.load_examples("domainnet/real", "train", data_dir=tmp_path)
        first = int(raw.labels[0])  # two classes that have examples
        second = int(next(c for c in raw.labels if c != first))
        stream = datasets.labelled_stream(
            "domainnet/real", classes=(second, first), image_shape=(16, 16, 3), data_dir=tmp_path
        )
        with pytest.raises(DataError, match="give image_shape"):
            datasets.labelled_stream("domainnet/real", data_dir=tmp_path)
    assert raw.images.dtype == object and len({i.shape for i in raw.images}) > 1
    assert stream.name == "domainnet_real" and stream.image_shape == (16, 16, 3)
    assert stream.class_names == (raw.class_names[second], raw.class_names[first])
    images, labels = _arrays(stream)
    assert images.shape[1:] == (16, 16, 3) and images.max() <= 1.0
    expected = [(raw.labels == second).sum(), (raw.labels == first).sum()]
    np.testing.assert_array_equal(np.bincount(labels, minlength=2), expected)


def test_ucf101_clips_through_mock_data(tmp_path):
    _fake_prepared("ucf101/ucf101_1", tmp_path)
    with tfds.testing.mock_data(
        num_examples=3, data_dir=os.fspath(tmp_path), policy=tfds.testing.MockPolicy.USE_FILES
    ):
        clips = datasets.load_examples(
            "ucf101/ucf101_1", "train", data_dir=tmp_path, image_key="video"
        )
    assert len(clips.images) == 3 and clips.images[0].ndim == 4  # [frames, H, W, 3]
    assert len(clips.class_names) == 101
    one = datasets.convert_images(clips.images[:1].tolist()[0][None], (8, 8, 3))
    assert one.shape == (1, len(clips.images[0]), 8, 8, 3)
    if len({len(c) for c in clips.images}) > 1:
        with pytest.raises(DataError, match="sample a fixed number of frames"):
            datasets.convert_images(clips.images, (8, 8, 3))


# k-shot splits ---------------------------------------------------------------------------


def _key_set(images) -> set[bytes]:
    return {np.round(image * 255).astype(np.uint8).tobytes() for image in images}


def test_k_shot_counts_determinism_and_disjointness(tmp_path, syn_digits_files):
    manual, *_ = syn_digits_files
    data_dir = tmp_path / "data"

    def split(seed):
        return datasets.target_split(
            "syn_digits", shots_per_class=4, seed=seed, data_dir=data_dir, manual_dir=manual
        )

    first, again, other = split(0), split(0), split(1)
    labelled, labels = _arrays(first.labelled)
    assert np.bincount(labels).tolist() == [4] * 10
    unlabelled, ids = _arrays(first.unlabelled)
    assert first.unlabelled.size == 80 and sorted(ids.tolist()) == list(range(80))
    np.testing.assert_array_equal(np.bincount(first.unlabelled.true_labels), [8] * 10)
    test, _ = _arrays(first.test)
    assert len(test) == 30
    parts = [_key_set(labelled), _key_set(unlabelled), _key_set(test)]
    assert sum(map(len, parts)) == 40 + 80 + 30  # all distinct images
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    np.testing.assert_array_equal(_arrays(again.labelled)[0], labelled)
    np.testing.assert_array_equal(_arrays(again.unlabelled)[0], unlabelled)
    assert _key_set(_arrays(other.labelled)[0]) != parts[0]
    np.testing.assert_array_equal(_arrays(other.test)[0], test)


def test_carved_test_part_is_the_same_for_every_seed(tmp_path, syn_digits_files):
    manual, *_ = syn_digits_files
    kwargs = {
        "shots_per_class": 2,
        "train_split": "train",
        "test_split": None,
        "test_per_class": 5,
        "data_dir": tmp_path / "data",
        "manual_dir": manual,
    }
    a = datasets.target_split("syn_digits", seed=0, **kwargs)
    b = datasets.target_split("syn_digits", seed=7, **kwargs)
    np.testing.assert_array_equal(_arrays(a.test)[0], _arrays(b.test)[0])
    assert a.test.size == 50 and a.labelled.size == 20 and a.unlabelled.size == 50
    assert _key_set(_arrays(a.test)[0]).isdisjoint(_key_set(_arrays(b.unlabelled)[0]))


def test_too_few_examples_for_shots_is_a_clear_error(tmp_path, syn_digits_files):
    manual, *_ = syn_digits_files
    with pytest.raises(DataError, match="fewer than shots_per_class=20"):
        datasets.target_split(
            "syn_digits", shots_per_class=20, seed=0, data_dir=tmp_path / "data", manual_dir=manual
        )


# Transforms ------------------------------------------------------------------------------


def _examples(labels, class_names=None):
    labels = np.asarray(labels)
    images = np.arange(len(labels), dtype=np.uint8).reshape(-1, 1, 1, 1)
    names = class_names or tuple(str(i) for i in range(10))
    return loading.Examples(images, labels, None, names)


def test_select_classes_relabels_in_the_given_order():
    examples = _examples([5, 0, 7, 5, 9, 7])
    kept = datasets.select_classes(examples, (7, 5))
    np.testing.assert_array_equal(kept.labels, [1, 0, 1, 0])
    np.testing.assert_array_equal(kept.images[:, 0, 0, 0], [0, 2, 3, 5])
    assert kept.class_names == ("7", "5")
    with pytest.raises(DataError, match="distinct label ids"):
        datasets.select_classes(examples, (5, 5))
    with pytest.raises(DataError, match="bad: \\[12\\]"):
        datasets.select_classes(examples, (1, 12))


def test_first_per_class_keeps_order():
    np.testing.assert_array_equal(loading.first_per_class([1, 0, 1, 1, 0, 2], 2), [0, 1, 2, 4, 5])
    np.testing.assert_array_equal(loading.first_per_class([1, 0], None), [0, 1])


def test_convert_images_channels_and_size():
    grey = np.full((2, 16, 16), 255, np.uint8)[..., None]
    rgb = datasets.convert_images(grey, (32, 32, 3))
    assert rgb.shape == (2, 32, 32, 3) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb, 1.0)
    padded = datasets.convert_images(np.full((1, 28, 28, 1), 255, np.uint8), (32, 32, 1), "pad")
    assert padded[0, 2:30, 2:30].min() == 1.0 and padded[0, :2].max() == 0.0
    colour = np.zeros((1, 4, 4, 3), np.uint8)
    colour[..., 1] = 255
    back = datasets.convert_images(colour, (4, 4, 1))
    np.testing.assert_allclose(back, 0.587, atol=1e-3)  # ITU-R 601-2 luma weight of green
    with pytest.raises(DataError, match="cannot pad"):
        datasets.convert_images(grey, (8, 8, 1), "pad")
    with pytest.raises(DataError, match="cannot convert 3 channels to 2"):
        datasets.convert_images(colour, (4, 4, 2))


def test_load_examples_is_cached(tmp_path, syn_digits_files):
    manual, *_ = syn_digits_files
    a = datasets.load_examples("syn_digits", "test", data_dir=tmp_path / "data", manual_dir=manual)
    b = datasets.load_examples("syn_digits", "test", data_dir=tmp_path / "data", manual_dir=manual)
    assert a is b and not a.images.flags.writeable


@pytest.mark.slow  # a fresh process imports TensorFlow: ~10 s
def test_importing_the_package_does_not_import_tfds():
    code = (
        "import sys, gradmix_tf.datasets, gradmix_tf.experiment; "
        "sys.exit('tensorflow_datasets' in sys.modules)"
    )
    env = dict(os.environ, PYTHONPATH=os.fspath(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    completed = subprocess.run([sys.executable, "-c", code], env=env, timeout=120)
    assert completed.returncode == 0


# A task named by TFDS names in a config -----------------------------------------------------


def test_tfds_task_from_config_options(tmp_path, syn_digits_files):
    import ml_collections

    from gradmix_tf.tasks.tfds import tfds_task

    manual, *_ = syn_digits_files
    usps_images = _numbered_images(40, (16, 16), seed=3)
    manual_files.write_usps_libsvm(os.fspath(manual), "train", usps_images, np.arange(40) % 10)
    options = ml_collections.ConfigDict(
        {
            "image_shape": (32, 32, 3),
            "sources": [{"dataset": "usps", "classes": (5, 6, 7, 8, 9), "name": "usps_5_9"}],
            "target": {"dataset": "syn_digits", "test_split": "test", "name": "syn"},
            "data_dir": os.fspath(tmp_path / "data"),
            "manual_dir": os.fspath(manual),
            "builder_kwargs": {"verify_checksums": False},
        }
    )
    data = tfds_task(seed=0, shots_per_class=2, max_per_class=3, **dict(options))
    (usps,) = data.sources
    assert usps.name == "usps_5_9" and usps.class_names == ("5", "6", "7", "8", "9")
    assert usps.size == 15 and usps.image_shape == (32, 32, 3)
    assert data.target.labelled.size == 20 and data.target.unlabelled.size == 10
    assert data.target.test.size == 30 and data.target.test.name == "syn_test"
    with pytest.raises(DataError, match="unknown keys \\['clases'\\]"):
        tfds_task(sources=[{"dataset": "usps", "clases": (1,)}], target={"dataset": "usps"})


def test_data_and_manual_dirs_may_start_with_a_tilde(tmp_path, monkeypatch, syn_digits_files):
    manual, *_ = syn_digits_files
    monkeypatch.setenv("HOME", os.fspath(tmp_path))
    builder = datasets.prepared_builder(
        "syn_digits", data_dir="~/data", manual_dir=f"~/{manual.relative_to(tmp_path)}"
    )
    assert builder.is_prepared()
    assert (tmp_path / "data" / "syn_digits" / "1.0.0" / "dataset_info.json").exists()
