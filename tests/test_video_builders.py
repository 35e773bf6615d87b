"""The HMDB51 and Kinetics TFDS builders, prepared from the real clips in a manual layout."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from gradmix_tf.datasets import hmdb51, kinetics
from tests.video_testing import (
    KINETICS_CLIPS,
    hmdb51_manual_dir,
    kinetics_manual_dir,
    shared_clip,
)

FPS, SIZE = 5.0, 24


def prepare(builder, manual_dir):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return builder


def test_hmdb51_prepares_from_the_official_layout(tmp_path):
    manual = hmdb51_manual_dir(tmp_path)
    config = hmdb51.Hmdb51Config(
        name="split1_test", split_number=1, fps=FPS, height=SIZE, width=SIZE
    )
    builder = prepare(hmdb51.Hmdb51(config=config, data_dir=str(tmp_path / "data")), manual)
    assert builder.info.splits["train"].num_examples == 3
    assert builder.info.splits["test"].num_examples == 1
    assert builder.info.features["label"].num_classes == 51
    labels = {}
    for example in builder.as_dataset(split="train").as_numpy_iterator():
        video = example["video"]
        assert video.dtype == np.uint8 and video.shape[1:] == (SIZE, SIZE, 3)
        assert 5 <= video.shape[0] <= 70  # 1.6-8 s clips at 5 frames a second
        labels[example["video_name"].decode()] = int(example["label"])
    cartwheel = hmdb51.CLASS_NAMES.index("cartwheel")
    wave = hmdb51.CLASS_NAMES.index("wave")
    assert sorted(labels.values()) == [cartwheel, wave, wave]
    test = next(iter(builder.as_dataset(split="test", as_supervised=True)))
    assert int(test[1]) == wave


def test_hmdb51_names_the_missing_files(tmp_path):
    builder = hmdb51.Hmdb51(config="split2", data_dir=str(tmp_path / "data"))
    with pytest.raises(FileNotFoundError, match="testTrainMulti_7030_splits"):
        prepare(builder, hmdb51_manual_dir(tmp_path))  # only split1 files were written


def test_kinetics_prepares_a_class_subset_from_a_local_folder(tmp_path):
    for name in KINETICS_CLIPS:
        shared_clip(name)
    manual = kinetics_manual_dir(tmp_path)
    config = kinetics.KineticsConfig(
        name="two_classes",
        classes=("juggling balls", "playing guitar"),
        fps=FPS,
        height=SIZE,
        width=SIZE + 8,
    )
    builder = prepare(kinetics.Kinetics(config=config, data_dir=str(tmp_path / "data")), manual)
    assert builder.info.splits["train"].num_examples == 2  # archery out, the missing clip skipped
    assert builder.info.splits["validation"].num_examples == 1
    assert "test" not in builder.info.splits
    assert builder.info.features["label"].names == ["juggling balls", "playing guitar"]
    labels = []
    for video, label in builder.as_dataset(split="train", as_supervised=True).as_numpy_iterator():
        assert video.shape[1:] == (SIZE, SIZE + 8, 3) and video.shape[0] >= 20  # 10 s at 5 fps
        assert video.max() > 100
        labels.append(int(label))
    assert sorted(labels) == [0, 1]


def test_kinetics_without_annotations_says_what_to_place(tmp_path):
    config = kinetics.KineticsConfig(name="one", classes=("archery",), fps=FPS, height=8, width=8)
    builder = kinetics.Kinetics(config=config, data_dir=str(tmp_path / "data"))
    os.makedirs(tmp_path / "clips_only" / "train")  # clips but no annotations/
    with pytest.raises(FileNotFoundError, match="annotations/train.csv"):
        prepare(builder, str(tmp_path / "clips_only"))
