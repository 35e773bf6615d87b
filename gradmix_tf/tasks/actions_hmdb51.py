"""UCF101 + a Kinetics class subset -> HMDB51: the paper's action-recognition transfer.

Sources (each with its own head): UCF101 (TFDS ``ucf101``, split 1, train)
and a Kinetics class subset (`gradmix_tf.datasets.kinetics`, train). Target:
HMDB51 split 1 (`gradmix_tf.datasets.hmdb51`): ``shots_per_class`` labelled
clips a class drawn from its train list, the rest of the train list
unlabelled, evaluated on its test list.

Every video becomes one fixed window of ``num_frames`` frames (the centre
window, every ``stride``-th frame) resized to ``size`` x ``size``; the video
trunks draw random ``clip_length`` windows inside it while training (see
`gradmix_tf.data.clips`). The data sets must be prepared first (see
docs/video.md); with a `manual_dir` a missing HMDB51 / Kinetics data set is
prepared here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from gradmix_tf.data.clips import resize_clip, sample_clip
from gradmix_tf.data.streams import (
    DataError,
    LabelledStream,
    MultiStreamData,
    TargetSplit,
    UnlabelledStream,
    k_shot_indices,
)
from gradmix_tf.datasets import hmdb51, kinetics

UCF101_STREAM = "ucf101"
KINETICS_STREAM = "kinetics"
TARGET_STREAM = "hmdb51"


def prepared_builder(name: str, config=None, data_dir=None, manual_dir=None):
    """A prepared TFDS builder of `name` with builder config `config`; prepares it from
    `manual_dir` when its files are there, else fails fast naming the files
    (`gradmix_tf.datasets.prepared_builder`)."""
    from gradmix_tf import datasets

    return datasets.prepared_builder(name, data_dir=data_dir, manual_dir=manual_dir, config=config)


def labels_of(builder, split: str) -> np.ndarray:
    """The labels of a split, in order, without decoding any video."""
    dataset = builder.as_dataset(split=split, decoders={"video": tfds.decode.SkipDecoding()})
    return np.fromiter((int(e["label"]) for e in dataset.as_numpy_iterator()), np.int64)


def capped_indices(labels: np.ndarray, max_per_class: int | None) -> np.ndarray:
    """The first `max_per_class` indices of each class (all when None)."""
    if not max_per_class:
        return np.arange(len(labels))
    keep = [np.flatnonzero(labels == c)[:max_per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def clip_dataset(builder, split, indices, num_frames, stride, size) -> tf.data.Dataset:
    """(clip float32 [num_frames, size, size, 3], label) of the examples at `indices`."""
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(indices, tf.int64), tf.ones([len(indices)], tf.int64)
        ),
        default_value=0,
    )
    dataset = builder.as_dataset(split=split, shuffle_files=False).enumerate()
    dataset = dataset.filter(lambda i, _: table.lookup(i) > 0)

    def to_clip(_, example):
        clip = sample_clip(example["video"], num_frames, "center", stride=stride)
        clip = resize_clip(clip, (size, size)) / 255.0
        return tf.ensure_shape(clip, [num_frames, size, size, 3]), tf.cast(
            example["label"], tf.int32
        )

    return dataset.map(to_clip, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def hmdb51_task(
    seed: int = 0,
    shots_per_class: int | None = 5,
    max_per_class: int | None = None,
    kinetics_classes: Sequence[str] = (),
    kinetics_name: str = "subset",
    use_ucf101: bool = True,
    ucf101_config: str = "ucf101_1_256",
    ucf101_stride: int = 3,
    hmdb51_split: int = 1,
    fps: float = 10.0,
    frame_size: int = 128,
    num_frames: int = 16,
    size: int = 112,
    data_dir: str | None = None,
    manual_dir: str | None = None,
) -> MultiStreamData:
    """The UCF101 + Kinetics -> HMDB51 task as `MultiStreamData`.

    Args:
        seed: draws the k-shot labelled clips of HMDB51's train list.
        shots_per_class: labelled target clips a class (None: all of them).
        max_per_class: caps the clips a class of each source.
        kinetics_classes: the Kinetics class subset (empty: no Kinetics source).
        kinetics_name: the name of that subset's builder config.
        use_ucf101: include the UCF101 source (TFDS `ucf101`, 25 fps).
        ucf101_config: its TFDS config; `ucf101_stride` samples every n-th frame.
        hmdb51_split: the official HMDB51 split (1, 2 or 3).
        fps, frame_size: decoding rate and frame size of the HMDB51 and
            Kinetics builders (their config names record both).
        num_frames, size: every clip's window length and frame size.
        data_dir: the TFDS data directory (None: TFDS's default).
        manual_dir: a folder with `hmdb51/` and `kinetics/` manual layouts;
            data sets not yet prepared are prepared from there.
    """
    tag = f"{fps:g}fps_{frame_size}px"

    def manual(name):
        return os.path.join(manual_dir, name) if manual_dir else None

    target_builder = prepared_builder(
        "hmdb51",
        hmdb51.Hmdb51Config(
            name=f"split{hmdb51_split}_{tag}",
            split_number=hmdb51_split,
            fps=fps,
            height=frame_size,
            width=frame_size,
        ),
        data_dir,
        manual(TARGET_STREAM),
    )
    hmdb_stride = 1
    sources = []
    if use_ucf101:
        builder = prepared_builder(f"ucf101/{ucf101_config}", data_dir=data_dir)
        sources.append((UCF101_STREAM, builder, ucf101_stride))
    if kinetics_classes:
        config = kinetics.KineticsConfig(
            name=f"{kinetics_name}_{tag}",
            classes=tuple(kinetics_classes),
            fps=fps,
            height=frame_size,
            width=frame_size,
        )
        builder = prepared_builder("kinetics", config, data_dir, manual(KINETICS_STREAM))
        sources.append((KINETICS_STREAM, builder, 1))
    if not sources:
        raise DataError("no source: set use_ucf101 or kinetics_classes.")

    streams = []
    for name, builder, stride in sources:
        indices = capped_indices(labels_of(builder, "train"), max_per_class)
        dataset = clip_dataset(builder, "train", indices, num_frames, stride, size)
        names = builder.info.features["label"].names
        streams.append(
            LabelledStream.from_dataset(name, dataset, names, len(indices), kind="clips")
        )

    class_names = target_builder.info.features["label"].names
    train_labels = labels_of(target_builder, "train")
    if shots_per_class is None:
        labelled, rest = np.arange(len(train_labels)), np.zeros([0], np.int64)
    else:
        labelled, rest = k_shot_indices(train_labels, shots_per_class, seed)

    def target_stream(split, indices, name):
        dataset = clip_dataset(target_builder, split, indices, num_frames, hmdb_stride, size)
        return LabelledStream.from_dataset(name, dataset, class_names, len(indices), kind="clips")

    test_indices = np.arange(target_builder.info.splits["test"].num_examples)
    unlabelled = None
    if len(rest):
        pool = target_stream("train", rest, f"{TARGET_STREAM}_unlabelled")
        unlabelled = UnlabelledStream.from_dataset(pool.name, pool.dataset, len(rest))
        unlabelled.true_labels = train_labels[rest].astype(np.int32)
    target = TargetSplit(
        target_stream("train", labelled, TARGET_STREAM),
        unlabelled,
        target_stream("test", test_indices, f"{TARGET_STREAM}_test"),
    )
    return MultiStreamData(streams, target)
