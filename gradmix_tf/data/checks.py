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
    """Checks `[N, ...]` images or clips; uint8 is scaled to [0, 1]; returns float32."""
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
    if np.issubdtype(examples.dtype, np.integer):
        examples = examples.astype(np.float32) / 255.0
    return examples.astype(np.float32, copy=False)


def check_labels(labels, num_classes: int, name: str) -> np.ndarray:
    """Checks integer class ids `[N]` in [0, num_classes); returns them as int32."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"stream '{name}': labels must have shape [N], got {labels.shape}.")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise DataError(f"stream '{name}': labels must be integer class ids.")
    labels = labels.astype(np.int32)
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
