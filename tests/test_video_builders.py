"""The HMDB51 and Kinetics TFDS builders, prepared from the real clips in a manual layout."""

from __future__ import annotations

import csv
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from gradmix_tf.datasets import hmdb51, kinetics
from tests.video_testing import HMDB51_CARTWHEEL, HMDB51_WAVE, KINETICS_CLIPS, shared_clip

FPS, SIZE = 5.0, 24


def hmdb51_manual_dir(root) -> str:
    """The official layout with the shared wave/cartwheel clips and tiny split1 files."""
    manual = os.path.join(root, "hmdb51_manual")
    marks = {"wave": {HMDB51_WAVE[0]: "1", HMDB51_WAVE[1]: "1", HMDB51_WAVE[2]: "2"}}
    # The official name of the cartwheel clip has no "hmdb51_" prefix.
    cartwheel_name = HMDB51_CARTWHEEL.removeprefix("hmdb51_")
    marks["cartwheel"] = {cartwheel_name: "1", "unused_clip.avi": "0"}
    sources = {HMDB51_CARTWHEEL: cartwheel_name, **{w: w for w in HMDB51_WAVE}}
    for class_name, entries in marks.items():
        os.makedirs(os.path.join(manual, hmdb51.VIDEOS_DIR, class_name), exist_ok=True)
        for source, name in sources.items():
            if name in entries:
                shutil.copy(
                    shared_clip(source), os.path.join(manual, hmdb51.VIDEOS_DIR, class_name, name)
                )
        os.makedirs(os.path.join(manual, hmdb51.SPLITS_DIR), exist_ok=True)
        with open(hmdb51.split_file(manual, class_name, 1), "w") as f:
            f.writelines(f"{name} {mark} \n" for name, mark in entries.items())
    return manual


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


def kinetics_manual_dir(root) -> str:
    """<split>/<class>/<clip>.mp4 + annotations/<split>.csv with the shared Kinetics clips."""
    manual = os.path.join(root, "kinetics_manual")
    rows = {  # split -> [(label, youtube id, file name)]
        "train": [
            ("playing guitar", "SOX5yA1l24A", "SOX5yA1l24A_000010_000020.mp4"),
            ("juggling balls", "R6llTwEh07w", "R6llTwEh07w.mp4"),
            ("juggling balls", "gone_video1", None),  # in the CSV, never downloaded
            ("archery", "WUzgd7C1pWA", "WUzgd7C1pWA.mp4"),  # a class outside the subset
        ],
        "validate": [("juggling balls", "WUzgd7C1pWA", "WUzgd7C1pWA.mp4")],
    }
    os.makedirs(os.path.join(manual, kinetics.ANNOTATIONS_DIR))
    for split, entries in rows.items():
        with open(os.path.join(manual, kinetics.ANNOTATIONS_DIR, f"{split}.csv"), "w") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            for label, youtube_id, file_name in entries:
                writer.writerow([label, youtube_id, 10, 20, split])
                if file_name:
                    folder = os.path.join(manual, split, label.replace(" ", "_"))
                    os.makedirs(folder, exist_ok=True)
                    shutil.copy(shared_clip(f"{youtube_id}.mp4"), os.path.join(folder, file_name))
    return manual


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
