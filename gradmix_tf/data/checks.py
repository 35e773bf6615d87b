"""Checks of the data contract: example arrays (images or clips) and label ids.

`gradmix_tf.data.streams` builds streams on them; `DataError` is the error of
every check (a launcher reports it in one line, exit code 2).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from gradmix_tf.errors import UserError


class DataError(UserError, ValueError):
    """Raised when a stream violates the data contract (a `UserError`: a launcher prints
    it in one line and exits with code 2)."""


@dataclasses.dataclass(frozen=True)
class Kind:
    """How the checks name and shape one kind of example (see the module docstring)."""

    plural: str  # "images"
    singular: str  # "image"
    unit: str  # what an empty stream lacks: "example"
    axes: str  # of one example, without the channel axis: "H, W"

    @property
    def rank(self) -> int:
        """Rank of one example, channel axis included."""
        return self.axes.count(",") + 2


KINDS = {
    "images": Kind("images", "image", "example", "H, W"),
    "clips": Kind("clips", "clip", "clip", "T, H, W"),
}


def example_kind(kind: str | None, array_rank: int | None = None) -> Kind:
    """The kind of examples named by `kind`, or read from an array's rank when None."""
    if kind is None:
        return KINDS["clips" if array_rank == KINDS["clips"].rank + 1 else "images"]
    if kind not in KINDS:
        raise DataError(f"kind must be one of {sorted(KINDS)} or None, got {kind!r}.")
    return KINDS[kind]


def as_float_examples(examples, name: str, kind: Kind) -> np.ndarray:
    """Checks `[N, ...]` images or clips (`checked_examples`); returns float32 in [0, 1].

    uint8 is divided by 255 and uint16 by 65535 (16-bit pixels); other integer
    dtypes (values in [0, 255]) by 255; float arrays are passed through.
    """
    examples = checked_examples(examples, name, kind)
    if examples.dtype == np.uint16:
        return examples.astype(np.float32) / 65535.0
    if np.issubdtype(examples.dtype, np.integer):
        examples = examples.astype(np.float32) / 255.0
    return examples.astype(np.float32, copy=False)


def checked_examples(examples, name: str, kind: Kind) -> np.ndarray:
    """Checks `[N, ...]` images or clips, values included; returns them with a channel axis.

    Integer dtypes other than uint8 and uint16 must hold values in [0, 255];
    float arrays must be finite and in [0, 1].
    """
    examples = np.asarray(examples)
    if examples.ndim == kind.rank:  # grey examples get a channel axis.
        examples = examples[..., None]
    if examples.ndim != kind.rank + 1:
        raise DataError(
            f"stream '{name}': {kind.plural} must have shape [N, {kind.axes}] or "
            f"[N, {kind.axes}, C], got {examples.shape}."
        )
    if not (
        np.issubdtype(examples.dtype, np.floating) or np.issubdtype(examples.dtype, np.integer)
    ):
        raise DataError(
            f"stream '{name}': {kind.plural} must be numeric, got dtype {examples.dtype}."
        )
    if np.issubdtype(examples.dtype, np.floating):
        check_unit_range(examples, name, kind)
    elif examples.dtype not in (np.uint8, np.uint16):
        check_8_bit_values(examples, name, kind)
    return examples


def check_8_bit_values(examples: np.ndarray, name: str, kind: Kind) -> None:
    """Integer examples of a dtype other than uint8 / uint16 must be in [0, 255]."""
    if not examples.size:
        return
    low, high = int(examples.min()), int(examples.max())
    if low < 0 or high > 255:
        raise DataError(
            f"stream '{name}': integer {kind.plural} of dtype {examples.dtype} must hold 8-bit "
            f"values in [0, 255], found values in [{low}, {high}]: pass uint8 {kind.plural} "
            f"(divided by 255), uint16 ones for 16-bit values (divided by 65535), or float "
            "ones in [0, 1]."
        )


def check_unit_range(examples: np.ndarray, name: str, kind: Kind) -> None:
    """Float examples must be finite and in [0, 1]; a DataError says how to fix them."""
    if not examples.size:
        return
    low, high = float(examples.min()), float(examples.max())  # NaN or Inf show here
    if not (np.isfinite(low) and np.isfinite(high)):
        finite = np.isfinite(examples).reshape(len(examples), -1)
        bad = np.flatnonzero(~finite.all(axis=1))
        raise DataError(
            f"stream '{name}': {kind.plural} contain {int((~finite).sum())} NaN or infinite "
            f"values, in {len(bad)} of {len(examples)} {kind.plural} (the first at index "
            f"{int(bad[0])}): replace those values or drop those {kind.plural}."
        )
    if low < 0.0 or high > 1.0:
        raise DataError(
            f"stream '{name}': float {kind.plural} must have values in [0, 1], found values "
            f"in [{low:g}, {high:g}]: {unit_range_fix(low, high, kind)}"
        )


def unit_range_fix(low: float, high: float, kind: Kind) -> str:
    """How to bring float examples of values in [low, high] to [0, 1]."""
    if low >= -0.05 and high <= 1.05:
        return (
            f"clip them to [0, 1] (np.clip({kind.plural}, 0, 1)): e.g. a bicubic or Lanczos "
            "resize overshoots a little."
        )
    if low >= 0.0 and high <= 255.0:
        return (
            f"divide them by 255 ({kind.plural} / 255.0), or pass them as uint8 (divided by "
            "255 here)."
        )
    if low >= 0.0 and high <= 65535.0:
        return "16-bit values? Divide them by 65535, or pass them as uint16 (divided by 65535)."
    if low >= -1.0 and high <= 1.0:
        return f"values in [-1, 1]? Map them to [0, 1] with ({kind.plural} + 1) / 2."
    return (
        f"rescale them to [0, 1] (e.g. ({kind.plural} - low) / (high - low)); normalisation "
        "(mean, std) belongs in the trunk, not in the data."
    )


def label_ids(labels, name: str, what: str = "labels") -> np.ndarray:
    """Checks that `labels` are integer ids of shape `[N]`; returns them as int32."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] != 1:
        raise DataError(
            f"stream '{name}': {what} must be integer class ids of shape [N], got an array of "
            f"shape {labels.shape} (one-hot or class-probability rows?): pass "
            f"{what}.argmax(axis=1)."
        )
    if labels.ndim != 1:
        fix = f": pass {what}.reshape(-1)." if labels.ndim == 2 else "."
        raise DataError(f"stream '{name}': {what} must have shape [N], got {labels.shape}{fix}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise DataError(f"stream '{name}': {what} must be integer class ids.")
    return labels.astype(np.int32)


def check_labels(labels, num_classes: int, name: str) -> np.ndarray:
    """Checks integer class ids `[N]` in [0, num_classes); returns them as int32."""
    labels = label_ids(labels, name)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][:5].tolist()
        raise DataError(
            f"stream '{name}': label ids {bad} are outside its head's range "
            f"[0, {num_classes - 1}] ({num_classes} class names). Relabel the stream "
            "to 0..C-1 or pass the full list of class names."
        )
    return labels


def checked_labels(dataset: tf.data.Dataset, num_classes: int, name: str) -> tf.data.Dataset:
    """Adds a run-time range check of the labels of a user-given dataset."""

    def check(x, y):
        message = f"stream '{name}': a label id is outside its head's range [0, {num_classes - 1}]"
        y = tf.cast(y, tf.int32)
        with tf.control_dependencies(
            [
                tf.debugging.assert_non_negative(y, message=message),
                tf.debugging.assert_less(y, num_classes, message=message),
            ]
        ):
            return tf.identity(x), tf.identity(y)

    return dataset.map(check)
