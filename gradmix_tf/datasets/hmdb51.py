"""HMDB51 as a TFDS builder, from the official files placed in `manual_dir`.

HMDB51 (H. Kuehne et al., "HMDB: A Large Video Database for Human Motion
Recognition", ICCV 2011): 6,766 clips of 51 actions, with three official
train/test splits (70/30 clips a class). The files cannot be downloaded
here; `MANUAL_DOWNLOAD_INSTRUCTIONS` says what to place where. Videos are
decoded by `tfds.features.Video` (the ffmpeg binary) to the frame rate and
frame size of the builder config.

    import tensorflow_datasets as tfds
    from gradmix_tf.datasets import hmdb51  # registers "hmdb51"
    builder = tfds.builder("hmdb51/split1", data_dir=..., )
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir="~/hmdb51_manual"))

Features: ``video`` uint8 `[T, H, W, 3]`, ``label`` (51 classes), ``video_name``.
Splits: ``train`` (label 1 in the split files) and ``test`` (label 2); clips
marked 0 are in neither.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow_datasets as tfds

CLASS_NAMES = (
    "brush_hair", "cartwheel", "catch", "chew", "clap", "climb", "climb_stairs", "dive",
    "draw_sword", "dribble", "drink", "eat", "fall_floor", "fencing", "flic_flac", "golf",
    "handstand", "hit", "hug", "jump", "kick", "kick_ball", "kiss", "laugh", "pick", "pour",
    "pullup", "punch", "push", "pushup", "ride_bike", "ride_horse", "run", "shake_hands",
    "shoot_ball", "shoot_bow", "shoot_gun", "sit", "situp", "smile", "smoke", "somersault",
    "stand", "swing_baseball", "sword", "sword_exercise", "talk", "throw", "turn", "walk",
    "wave",
)  # fmt: skip
"""The 51 actions, in label order (alphabetical, as the official archive's folders)."""

VIDEOS_DIR = "videos"
SPLITS_DIR = "testTrainMulti_7030_splits"
_SPLIT_IDS = {"train": "1", "test": "2"}


def video_feature(config) -> tfds.features.Video:
    """`tfds.features.Video` decoding with ffmpeg to the config's frame rate and size."""
    args = ["-vf", f"fps={config.fps},scale={config.width}:{config.height}"]
    return tfds.features.Video(shape=(None, config.height, config.width, 3), ffmpeg_extra_args=args)


@dataclasses.dataclass
class Hmdb51Config(tfds.core.BuilderConfig):
    """Which official split, and the frame rate / size videos are decoded to."""

    split_number: int = 1
    fps: float = 10.0
    height: int = 112
    width: int = 112


def split_file(manual_dir: str, class_name: str, split_number: int) -> str:
    return os.path.join(manual_dir, SPLITS_DIR, f"{class_name}_test_split{split_number}.txt")


def read_split_file(path: str) -> list[tuple[str, str]]:
    """(video file name, "0" | "1" | "2") pairs of one official split file."""
    entries = []
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 2:
                entries.append((fields[0], fields[1]))
    return entries


class Hmdb51(tfds.core.GeneratorBasedBuilder):
    """HMDB51 from the official videos and split files (manual download)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: the official videos and three splits."}
    BUILDER_CONFIGS = [
        Hmdb51Config(name=f"split{n}", split_number=n, description=f"official split {n}")
        for n in (1, 2, 3)
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download from https://serre-lab.clps.brown.edu/resource/hmdb-a-large-human-motion-database/
    the videos (hmdb51_org.rar) and the three splits (test_train_splits.rar), then lay them
    out in `manual_dir` as:

        manual_dir/{VIDEOS_DIR}/<class>/<clip>.avi          (unrar hmdb51_org.rar, then each
                                                        <class>.rar into {VIDEOS_DIR}/)
        manual_dir/{SPLITS_DIR}/<class>_test_split<N>.txt

    e.g. {VIDEOS_DIR}/wave/TrumanShow_wave_f_nm_np1_fr_med_26.avi and
    {SPLITS_DIR}/wave_test_split1.txt, whose lines are "<clip>.avi <0|1|2>"
    (1: train, 2: test, 0: unused). Decoding needs the ffmpeg binary.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "video": video_feature(self.builder_config),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                    "video_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("video", "label"),
            homepage="https://serre-lab.clps.brown.edu/resource/hmdb-a-large-human-motion-database/",
        )

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        number = self.builder_config.split_number
        found = [c for c in CLASS_NAMES if os.path.exists(split_file(manual_dir, c, number))]
        if not found:
            raise FileNotFoundError(
                f"no {SPLITS_DIR}/<class>_test_split{number}.txt in {manual_dir}.\n"
                + self.MANUAL_DOWNLOAD_INSTRUCTIONS
            )
        return {
            split: self._generate_examples(manual_dir, found, number, split_id)
            for split, split_id in _SPLIT_IDS.items()
        }

    def _generate_examples(self, manual_dir, classes, number, split_id):
        for class_name in classes:
            for video, mark in read_split_file(split_file(manual_dir, class_name, number)):
                if mark != split_id:
                    continue
                path = os.path.join(manual_dir, VIDEOS_DIR, class_name, video)
                if not os.path.exists(path):
                    raise FileNotFoundError(
                        f"{path} is listed in {split_file(manual_dir, class_name, number)} but "
                        f"missing: unpack {class_name}.rar into {VIDEOS_DIR}/{class_name}/."
                    )
                key = f"{class_name}/{video}"
                yield key, {"video": path, "label": class_name, "video_name": key}
