"""A Kinetics class subset as a TFDS builder, from a local folder of clips.

Kinetics (W. Kay et al., "The Kinetics Human Action Video Dataset", 2017) is
distributed as YouTube ids plus annotation CSVs; the clips are fetched by
the user. This builder reads a local copy:

    manual_dir/<split>/<class>/<clip>.mp4          (<split>: train, validate, test)
    manual_dir/annotations/<split>.csv             (columns label, youtube_id,
                                                    time_start, time_end, split)

for a user-chosen subset of classes (`KineticsConfig.classes`, required). A clip is found by its YouTube id: the first file
in `<split>/<class>/` whose name starts with it (e.g. `<id>.mp4` or
`<id>_000010_000020.mp4`); CSV rows whose clip is missing are skipped (many
YouTube videos are gone) and counted in the log. Class folders may use the
label as written or with spaces as underscores. Videos are decoded by
`tfds.features.Video` (ffmpeg) to the config's frame rate and size.

    from gradmix_tf.datasets import kinetics  # registers "kinetics"
    config = kinetics.KineticsConfig(name="sports5", classes=("archery", ...))
    builder = kinetics.Kinetics(config=config, data_dir=...)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir="~/kinetics400"))

Splits: ``train``, ``validation`` (from validate.csv) and ``test``, each only
when its CSV exists.
"""

from __future__ import annotations

import csv
import dataclasses
import os

import tensorflow_datasets as tfds
from absl import logging

from gradmix_tf.datasets.hmdb51 import video_feature

ANNOTATIONS_DIR = "annotations"
SPLITS = {"train": "train", "validation": "validate", "test": "test"}
"""TFDS split name -> the folder and CSV name of the Kinetics release."""
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi")


@dataclasses.dataclass
class KineticsConfig(tfds.core.BuilderConfig):
    """The class subset (in label order) and the decoding frame rate / size."""

    classes: tuple[str, ...] | None = None
    fps: float = 10.0
    height: int = 112
    width: int = 112


def read_annotations(path: str) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"label", "youtube_id"} <= set(rows[0]):
        raise ValueError(f"{path}: need the columns 'label' and 'youtube_id', got {list(rows[0])}.")
    return rows


def find_clip(split_dir: str, label: str, youtube_id: str) -> str | None:
    """The clip file of `youtube_id` under `split_dir/<label>/`, or None."""
    for folder in dict.fromkeys((label, label.replace(" ", "_"))):
        directory = os.path.join(split_dir, folder)
        if not os.path.isdir(directory):
            continue
        for name in sorted(os.listdir(directory)):
            if name.startswith(youtube_id) and name.lower().endswith(VIDEO_EXTENSIONS):
                return os.path.join(directory, name)
    return None


class Kinetics(tfds.core.GeneratorBasedBuilder):
    """Kinetics (a class subset) from local clips and the annotation CSVs."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: local clips, user-chosen class subset."}
    BUILDER_CONFIGS = [
        KineticsConfig(
            name="example", classes=("archery", "juggling balls"), description="2 classes"
        )
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Fetch the Kinetics clips (e.g. Kinetics-400 with its annotation CSVs from
    https://github.com/cvdfoundation/kinetics-dataset) and lay them out in `manual_dir` as:

        manual_dir/<split>/<class>/<youtube_id>[_<start>_<end>].mp4   (<split>: train, validate, test)
        manual_dir/{ANNOTATIONS_DIR}/<split>.csv      (columns: label,youtube_id,time_start,time_end,split)

    Only the classes of the builder config (KineticsConfig.classes) are read; missing clips
    are skipped. Decoding needs the ffmpeg binary.
    """

    def _class_names(self) -> tuple[str, ...]:
        if not self.builder_config.classes:
            raise ValueError(
                "choose the Kinetics classes to read: Kinetics(config=KineticsConfig(name=..., "
                "classes=('archery', ...)), ...); the labels of the data set are these classes."
            )
        return tuple(self.builder_config.classes)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "video": video_feature(self.builder_config),
                    "label": tfds.features.ClassLabel(names=self._class_names()),
                    "video_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("video", "label"),
            homepage="https://github.com/google-deepmind/kinetics-i3d",
        )

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        available = {
            split: os.path.join(manual_dir, ANNOTATIONS_DIR, f"{name}.csv")
            for split, name in SPLITS.items()
        }
        available = {split: path for split, path in available.items() if os.path.exists(path)}
        if not available:
            raise FileNotFoundError(
                f"no {ANNOTATIONS_DIR}/train.csv, validate.csv or test.csv in {manual_dir}.\n"
                + self.MANUAL_DOWNLOAD_INSTRUCTIONS
            )
        classes = set(self.info.features["label"].names)
        return {
            split: self._generate_examples(manual_dir, SPLITS[split], path, classes)
            for split, path in available.items()
        }

    def _generate_examples(self, manual_dir, split_name, annotations, classes):
        split_dir = os.path.join(manual_dir, split_name)
        missing = 0
        for row in read_annotations(annotations):
            if row["label"] not in classes:
                continue
            path = find_clip(split_dir, row["label"], row["youtube_id"])
            if path is None:
                missing += 1
                continue
            key = os.path.relpath(path, manual_dir)
            yield key, {"video": path, "label": row["label"], "video_name": key}
        if missing:
            logging.warning("kinetics/%s: %d clips of the CSV are missing.", split_name, missing)
