"""`configs/paper_digits.py` (task `tfds`): MNIST 0-4 + SVHN 5-9 -> MNIST-M, offline.

`mnist` and `svhn_cropped` have their real metadata written to a data dir and are served by
`tfds.testing.mock_data`; `mnist_m` is built for real by its builder from a manual dir of
generated files, then served by the mock too (random examples of its real features).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import paper_digits
from gradmix_tf import datasets, experiment
from gradmix_tf.datasets import manual_files
from tests.workdir_testing import output_of, run_launcher

NUM_EXAMPLES = 300  # a split, under the mock


def _fake_prepared(name: str, data_dir: str) -> None:
    """Writes a TFDS dataset's metadata (from its code) so that `mock_data` serves it."""
    builder = tfds.builder(name, data_dir=data_dir)
    builder.data_path.mkdir(parents=True, exist_ok=True)
    builder.info.write_to_directory(builder.data_path)


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory) -> tuple[str, str]:
    """(data_dir, manual_dir): mnist and svhn_cropped metadata, mnist_m built from files."""
    root = tmp_path_factory.mktemp("paper_digits")
    data_dir, manual_dir = str(root / "data"), str(root / "manual")
    rng = np.random.default_rng(0)
    for split, count in (("train", 40), ("test", 20)):
        images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        manual_files.write_mnist_m(manual_dir, split, images, np.arange(count) % 10)
    assert datasets.prepare("mnist_m", data_dir=data_dir, manual_dir=manual_dir) == {
        "test": 20,
        "train": 40,
    }
    for name in ("mnist", "svhn_cropped"):
        _fake_prepared(name, data_dir)
    return data_dir, manual_dir


def _smoke_config(data_dir, manual_dir):
    config = paper_digits.get_config("smoke")
    config.data.task_options.data_dir = data_dir
    config.data.task_options.manual_dir = manual_dir
    return config


def test_the_config_passes_its_checks_for_every_method():
    for method in experiment.METHODS:
        config = paper_digits.get_config()
        config.method = method
        experiment.resolve_config(config)
    with pytest.raises(ValueError, match="unknown config argument"):
        paper_digits.get_config("fast")


def test_the_streams_of_the_paper_setting(data_dirs):
    config = experiment.resolve_config(_smoke_config(*data_dirs))
    with tfds.testing.mock_data(
        num_examples=NUM_EXAMPLES,
        data_dir=data_dirs[0],
        policy=tfds.testing.MockPolicy.USE_FILES,
    ):
        data = experiment.build_data(config)
    assert [s.name for s in data.sources] == ["mnist_0_4", "svhn_5_9"]
    assert data.sources[0].class_names == ("0", "1", "2", "3", "4")
    assert data.sources[1].class_names == ("5", "6", "7", "8", "9")
    assert data.target_class_names == tuple(str(d) for d in range(10))
    assert data.image_shape == (32, 32, 3)
    shots = config.data.shots_per_class
    assert data.target.labelled.size == 10 * shots
    for source in data.sources:  # at most max_per_class (20) a class
        labels = np.concatenate([y for _, y in source.dataset.batch(1000).as_numpy_iterator()])
        assert np.bincount(labels).max() <= config.data.max_per_class


@pytest.mark.slow  # a fresh process (TensorFlow imports, 30 training steps): ~25 s
def test_train_launcher_on_the_paper_setting(data_dirs, tmp_path):
    data_dir, manual_dir = data_dirs
    workdir = str(tmp_path / "run")
    completed = run_launcher(
        "tests.mocked_tfds",
        data_dir,
        str(NUM_EXAMPLES),
        "launch.train",
        "--config=configs/paper_digits.py:smoke",
        f"--config.data.task_options.data_dir={data_dir}",
        f"--config.data.task_options.manual_dir={manual_dir}",
        f"--workdir={workdir}",
    )
    assert completed.returncode == 0, output_of(completed)
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    assert results["task"] == "tfds" and results["steps"] == 30
    assert set(results["mixing_weights"]) == {"mnist_0_4", "svhn_5_9", "pseudo_labels"}
    with open(os.path.join(workdir, "export", "gradmix_export.json")) as f:
        assert json.load(f)["class_names"] == [str(d) for d in range(10)]
