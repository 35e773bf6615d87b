"""Video streams: the data contract of `gradmix_tf.data.streams` with clips for images.

`LabelledStream.from_arrays` and friends check for *image* arrays
`[N, H, W, C]`; these constructors check *clip* arrays `[N, T, H, W, C]` and
build the same stream classes, so `MultiStreamData`, `GradMixModel` and the
callbacks work on video unchanged (a stream's `image_shape` is then the clip
shape `(T, H, W, C)`). Keep `data.max_shift = 0` for video: its random shift
is for images (video trunks do their own temporal crop).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from gradmix_tf.data.streams import (
    DataError,
    LabelledStream,
    TargetSplit,
    UnlabelledStream,
    _check_labels,
    k_shot_indices,
)


def as_float_clips(clips, name: str) -> np.ndarray:
    """Checks `[N, T, H, W, C]` clips; uint8 is scaled to [0, 1]; returns float32."""
    clips = np.asarray(clips)
    if clips.ndim == 4:  # [N, T, H, W] grey clips get a channel axis.
        clips = clips[..., None]
    if clips.ndim != 5:
        raise DataError(
            f"stream '{name}': clips must have shape [N, T, H, W] or [N, T, H, W, C], "
            f"got {clips.shape}."
        )
    if np.issubdtype(clips.dtype, np.integer):
        return clips.astype(np.float32) / 255.0
    if not np.issubdtype(clips.dtype, np.floating):
        raise DataError(f"stream '{name}': clips must be numeric, got dtype {clips.dtype}.")
    return clips.astype(np.float32, copy=False)


def labelled_clip_stream(name: str, clips, labels, class_names: Sequence[str]) -> LabelledStream:
    """A labelled stream of clips from numpy arrays (uint8 clips are scaled to [0, 1])."""
    class_names = tuple(str(c) for c in class_names)
    clips = as_float_clips(clips, name)
    labels = _check_labels(labels, len(class_names), name)
    if len(clips) != len(labels):
        raise DataError(f"stream '{name}': {len(clips)} clips but {len(labels)} labels.")
    if len(clips) == 0:
        raise DataError(f"stream '{name}' is empty: it needs at least one clip.")
    dataset = tf.data.Dataset.from_tensor_slices((clips, labels))
    return LabelledStream(name, dataset, class_names, len(clips))


def labelled_clip_stream_from_dataset(
    name: str, dataset: tf.data.Dataset, class_names: Sequence[str], size: int
) -> LabelledStream:
    """Wraps an unbatched dataset of `(clip float32 [T, H, W, C], label)` pairs."""
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2 and spec[0].shape.rank == 4):
        raise DataError(f"stream '{name}': need (clip [T, H, W, C], label) pairs, got {spec}.")
    if not spec[0].shape.is_fully_defined():
        raise DataError(
            f"stream '{name}': clips need a static shape, got {spec[0].shape}: sample "
            "fixed-length clips of a fixed size (gradmix_tf.video.clips.sample_clip)."
        )
    if size <= 0:
        raise DataError(f"stream '{name}' is empty: it needs at least one clip.")
    dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32), tf.cast(y, tf.int32)))
    return LabelledStream(name, dataset, tuple(str(c) for c in class_names), size)


def unlabelled_clip_stream(name: str, clips, true_labels=None) -> UnlabelledStream:
    """Unlabelled clips with ids 0..N-1 (true labels only for pseudo-label precision)."""
    clips = as_float_clips(clips, name)
    if len(clips) == 0:
        raise DataError(f"stream '{name}' is empty: it needs at least one clip.")
    ids = np.arange(len(clips), dtype=np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((clips, ids))
    if true_labels is not None:
        true_labels = np.asarray(true_labels, dtype=np.int32)
    return UnlabelledStream(name, dataset, len(clips), true_labels)


def clip_target_split(
    train_clips,
    train_labels,
    test_clips,
    test_labels,
    class_names: Sequence[str],
    shots_per_class: int | None,
    seed: int,
    name: str = "target",
) -> TargetSplit:
    """`TargetSplit.from_arrays` for clips: k labelled clips a class, the rest unlabelled."""
    train_labels = np.asarray(train_labels)
    if shots_per_class is None:
        labelled, rest = np.arange(len(train_labels)), np.zeros([0], np.int64)
    else:
        labelled, rest = k_shot_indices(train_labels, shots_per_class, seed)
    train_clips = np.asarray(train_clips)
    unlabelled = None
    if len(rest):
        unlabelled = unlabelled_clip_stream(
            f"{name}_unlabelled", train_clips[rest], train_labels[rest]
        )
    return TargetSplit(
        labelled_clip_stream(name, train_clips[labelled], train_labels[labelled], class_names),
        unlabelled,
        labelled_clip_stream(f"{name}_test", test_clips, test_labels, class_names),
    )
