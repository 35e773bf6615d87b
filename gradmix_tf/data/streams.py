"""The multi-stream data contract of GradMix.

A GradMix problem has K labelled *source* streams, each in its own domain and
with its own label space, and a *target* with a small labelled set, a large
unlabelled set (every example carries an integer id, used to look up its
pseudo-label) and a held-out test set.

Everything is batch-first. One training element is a dict::

    {
        "sources": ((x_1, y_1), ..., (x_K, y_K)),   # x: [B, H, W, C] or [B, T, H, W, C], y: [B]
        "target": (x_T, y_T),                      # the labelled target batch
        "unlabelled": (x_U, ids_U),                # present when T_u has examples
    }

where B is the global batch size: every stream contributes B examples to a
step. Streams of different sizes are repeated independently, so a small
source is simply seen more often.

Users bring their own data with `LabelledStream.from_arrays` /
`UnlabelledStream.from_arrays` (numpy) or the `from_dataset` constructors
(`tf.data`), and `MultiStreamData`; `TargetSplit.from_arrays` draws the
k-shot labelled split deterministically from a seed.

Images and clips. An example is an image `[H, W, C]` or a clip of frames
`[T, H, W, C]`; the same classes and constructors take both (a stream's
`image_shape` is then the clip shape `(T, H, W, C)`), so `MultiStreamData`,
`GradMixModel` and the callbacks work on video unchanged. The `kind`
argument of the constructors says which ("images" or "clips"); left at
`None` it is read from the rank:

- arrays (`from_arrays`): rank 3 is grey images `[N, H, W]` (a channel axis
  is added), rank 4 images `[N, H, W, C]`, rank 5 clips `[N, T, H, W, C]`.
  Rank 4 is always images: grey clips `[N, T, H, W]` need `kind="clips"`
  (or an explicit channel axis, `clips[..., None]`);
- datasets (`LabelledStream.from_dataset`): an element of rank 3 is an
  image; a clip `[T, H, W, C]` has the rank of a batch of images, so a
  dataset of clips needs `kind="clips"` (and a static clip shape).

Values. Examples are float32 in [0, 1]. Arrays are checked: uint8 is
divided by 255, uint16 by 65535 (16-bit pixels), other integer dtypes must
hold values in [0, 255] (divided by 255); float arrays must be finite and
in [0, 1] (pixel values in [0, 255]: divide by 255 first). Labels are
integer class ids `[N]` (one-hot rows: `labels.argmax(axis=1)`). Keep
`max_shift = 0` for clips: the random shift is for images (the video
trunks crop in time themselves).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from gradmix_tf.data.checks import (  # noqa: F401  (DataError: part of this module's API)
    KINDS,
    DataError,
    as_float_examples,
    check_labels,
    checked_examples,
    checked_labels,
    example_kind,
    label_ids,
)

_SHUFFLE_BUFFER = 10_000


def random_shift(image, seed, max_shift: int):
    """Translates one [H, W, C] image by up to `max_shift` pixels (mirrored edges)."""
    padding = [[max_shift, max_shift], [max_shift, max_shift], [0, 0]]
    padded = tf.pad(image, padding, mode="SYMMETRIC")
    return tf.image.stateless_random_crop(padded, tf.shape(image), seed=seed)


@dataclasses.dataclass
class LabelledStream:
    """A labelled dataset in its own domain and label space.

    Attributes:
        name: a short name, used in logs (`loss/<name>`, `mixing_weight/<name>`).
        dataset: unbatched `tf.data.Dataset` of `(example float32, label int32 [])`,
            an example being an image `[H, W, C]` or a clip `[T, H, W, C]`.
        class_names: the label space; label `i` means `class_names[i]`.
        size: number of examples, when known.
        label_relation: the target class each of the stream's classes is, where
            its name differs (source class name -> target class name), or None:
            classes are matched to the target's by name
            (`GradMixOptions.label_adapter`).
    """

    name: str
    dataset: tf.data.Dataset
    class_names: tuple[str, ...]
    size: int | None = None
    label_relation: dict[str, str] | None = None

    @classmethod
    def from_arrays(
        cls,
        name: str,
        images,
        labels,
        class_names: Sequence[str],
        *,
        kind: str | None = None,
        label_relation: dict[str, str] | None = None,
    ) -> LabelledStream:
        """Builds a stream from numpy arrays (values: see the module docstring).

        Args:
            images: images `[N, H, W(, C)]` or clips `[N, T, H, W(, C)]`: uint8,
                uint16, or float in [0, 1].
            labels: `[N]` integer class ids in `[0, len(class_names))`.
            kind: "images", "clips" or None (read from the rank; see the
                module docstring: grey clips `[N, T, H, W]` need "clips").
            label_relation: see the class docstring.
        """
        class_names = tuple(str(c) for c in class_names)
        kind = example_kind(kind, np.ndim(images))
        images = as_float_examples(images, name, kind)
        labels = check_labels(labels, len(class_names), name)
        if len(images) != len(labels):
            raise DataError(
                f"stream '{name}': {len(images)} {kind.plural} but {len(labels)} labels."
            )
        if len(images) == 0:
            raise DataError(f"stream '{name}' is empty: it needs at least one {kind.unit}.")
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        return cls(name, dataset, class_names, len(images), label_relation)

    @classmethod
    def from_dataset(
        cls,
        name: str,
        dataset: tf.data.Dataset,
        class_names: Sequence[str],
        size: int | None = None,
        *,
        kind: str | None = None,
        label_relation: dict[str, str] | None = None,
    ) -> LabelledStream:
        """Wraps an unbatched `tf.data.Dataset` of `(image, label)` or `(clip, label)` pairs.

        Args:
            size: number of examples; None reads the dataset's cardinality.
            kind: "images" (None: elements `[H, W, C]`) or "clips" (elements
                `[T, H, W, C]` of a static shape: sample fixed-length clips of
                a fixed size, `gradmix_tf.data.clips`).
            label_relation: see the class docstring.

        The labels are checked against `class_names` as the dataset is read.
        """
        kind = example_kind(kind)
        spec = dataset.element_spec
        if not (isinstance(spec, tuple) and len(spec) == 2):
            raise DataError(
                f"stream '{name}': the dataset must yield ({kind.singular}, label) pairs, "
                f"got {spec}."
            )
        if spec[0].shape.rank != kind.rank:
            raise DataError(
                f"stream '{name}': {kind.plural} must be unbatched [{kind.axes}, C], "
                f"got {spec[0].shape}."
            )
        if spec[1].shape.rank:
            raise DataError(
                f"stream '{name}': labels must be integer class ids (shape []), got label "
                f"shape {spec[1].shape} (one-hot or class-probability rows?): map the dataset "
                "with lambda x, y: (x, tf.argmax(y, axis=-1))."
            )
        if kind is KINDS["clips"] and not spec[0].shape.is_fully_defined():
            raise DataError(
                f"stream '{name}': clips need a static shape, got {spec[0].shape}: sample "
                "fixed-length clips of a fixed size (gradmix_tf.data.clips.sample_clip)."
            )
        class_names = tuple(str(c) for c in class_names)
        if size is None:
            cardinality = int(dataset.cardinality())
            size = cardinality if cardinality >= 0 else None
        if size is not None and size <= 0:
            raise DataError(f"stream '{name}' is empty: it needs at least one {kind.unit}.")
        dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32), y))
        dataset = checked_labels(dataset, len(class_names), name)
        return cls(name, dataset, class_names, size, label_relation)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The shape of one example: `(H, W, C)`, or `(T, H, W, C)` for clips."""
        return tuple(self.dataset.element_spec[0].shape.as_list())


@dataclasses.dataclass
class UnlabelledStream:
    """Unlabelled target examples, each with an integer id in [0, size).

    Attributes:
        name: a short name for logs.
        dataset: unbatched `tf.data.Dataset` of `(example float32, id int32 [])`, an
            example being an image `[H, W, C]` or a clip `[T, H, W, C]`.
        size: number of examples (the size of the pseudo-label table).
        true_labels: optional `[size]` labels, used only to report the
            precision of pseudo-labels (never for training).
    """

    name: str
    dataset: tf.data.Dataset
    size: int
    true_labels: np.ndarray | None = None

    @classmethod
    def from_arrays(
        cls, name: str, images, true_labels=None, *, kind: str | None = None
    ) -> UnlabelledStream:
        """Builds a stream from images or clips, with ids 0..N-1 (see `LabelledStream`).

        Args:
            true_labels: optional `[N]` labels, only for pseudo-label precision.
            kind: "images", "clips" or None (read from the rank).
        """
        kind = example_kind(kind, np.ndim(images))
        images = as_float_examples(images, name, kind)
        if len(images) == 0:
            raise DataError(f"stream '{name}' is empty: it needs at least one {kind.unit}.")
        ids = np.arange(len(images), dtype=np.int32)
        dataset = tf.data.Dataset.from_tensor_slices((images, ids))
        if true_labels is not None:
            true_labels = label_ids(true_labels, name, "true_labels")
            if len(true_labels) != len(images):
                raise DataError(
                    f"stream '{name}': {len(images)} {kind.plural} but {len(true_labels)} "
                    "true_labels."
                )
        return cls(name, dataset, len(images), true_labels)

    @classmethod
    def empty(cls, name: str, image_shape: Sequence[int]) -> UnlabelledStream:
        """A stream of no examples (size 0) of `image_shape`, e.g. the unlabelled set of a
        k-shot split whose shots take the whole pool. A model for it has no pseudo-labelled
        stream (`num_unlabelled=0`), and `PseudoLabeler` on it does nothing."""
        images = np.zeros([0, *image_shape], np.float32)
        dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros([0], np.int32)))
        return cls(name, dataset, 0, np.zeros([0], np.int32))

    @classmethod
    def from_dataset(cls, name: str, dataset: tf.data.Dataset, size: int) -> UnlabelledStream:
        """Wraps a dataset of images or clips (any extra items are dropped); ids 0..size-1
        are attached in order."""
        if size <= 0:
            raise DataError(f"stream '{name}' is empty: it needs at least one example.")
        ids = tf.data.Dataset.range(size).map(lambda i: tf.cast(i, tf.int32))
        images = dataset.map(lambda x, *_: tf.cast(x, tf.float32))
        return cls(name, tf.data.Dataset.zip((images, ids)), size)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The shape of one example: `(H, W, C)`, or `(T, H, W, C)` for clips."""
        return tuple(self.dataset.element_spec[0].shape.as_list())


def k_shot_indices(labels, shots_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draws `shots_per_class` indices a class, deterministically from `seed`.

    Returns:
        (labelled, rest): sorted index arrays that partition `range(len(labels))`.

    Raises:
        DataError: when a class has fewer than `shots_per_class` examples.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    labelled = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < shots_per_class:
            raise DataError(
                f"class {c} has {len(members)} labelled target examples, fewer than "
                f"shots_per_class={shots_per_class}. Lower shots_per_class or add examples."
            )
        labelled.append(rng.choice(members, size=shots_per_class, replace=False))
    labelled = np.sort(np.concatenate(labelled)) if labelled else np.zeros([0], np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), labelled)
    return labelled, rest


@dataclasses.dataclass
class TargetSplit:
    """The target's labelled set T_l, unlabelled set T_u and test set.

    `unlabelled` is None in the oracle setting (no k-shot split); a k-shot
    split always has one, empty (size 0) when the shots take the whole pool.
    """

    labelled: LabelledStream
    unlabelled: UnlabelledStream | None
    test: LabelledStream

    @classmethod
    def from_arrays(
        cls,
        train_images,
        train_labels,
        test_images,
        test_labels,
        class_names: Sequence[str],
        shots_per_class: int | None,
        seed: int,
        name: str = "target",
        *,
        kind: str | None = None,
    ) -> TargetSplit:
        """Splits the target's training pool into k-shot labelled + unlabelled.

        Args:
            train_images, test_images: images or clips (see `LabelledStream.from_arrays`).
            shots_per_class: labelled examples a class (drawn from `seed`); the
                rest become the unlabelled set, with their true labels kept
                only for pseudo-label precision (an empty set when no example
                is left). `None` labels the whole pool (the oracle setting)
                and leaves no unlabelled set (None).
            kind: "images", "clips" or None (read from the rank).
        """
        example = example_kind(kind, np.ndim(train_images))
        train_images = checked_examples(train_images, name, example)  # the whole pool
        train_labels = check_labels(train_labels, len(class_names), name)
        if len(train_images) != len(train_labels):
            raise DataError(
                f"stream '{name}': {len(train_images)} {example.plural} but "
                f"{len(train_labels)} labels."
            )
        if shots_per_class is None:
            labelled, rest = np.arange(len(train_labels)), np.zeros([0], np.int64)
        else:
            labelled, rest = k_shot_indices(train_labels, shots_per_class, seed)
        labelled_stream = LabelledStream.from_arrays(
            name, train_images[labelled], train_labels[labelled], class_names, kind=kind
        )
        unlabelled_stream = None
        if len(rest):
            unlabelled_stream = UnlabelledStream.from_arrays(
                f"{name}_unlabelled", train_images[rest], train_labels[rest], kind=kind
            )
        elif shots_per_class is not None:
            unlabelled_stream = UnlabelledStream.empty(
                f"{name}_unlabelled", labelled_stream.image_shape
            )
        test_stream = LabelledStream.from_arrays(
            f"{name}_test", test_images, test_labels, class_names, kind=kind
        )
        return cls(labelled_stream, unlabelled_stream, test_stream)


@dataclasses.dataclass
class MultiStreamData:
    """K labelled sources plus a target split, checked to agree with each other."""

    sources: list[LabelledStream]
    target: TargetSplit

    def __post_init__(self):
        self.sources = list(self.sources)
        names = [s.name for s in self.sources] + [self.target.labelled.name]
        if len(set(names)) != len(names):
            raise DataError(f"stream names must be unique, got {names}.")
        shape = self.target.labelled.image_shape
        others = self.sources + [self.target.test]
        if self.target.unlabelled is not None:
            others.append(self.target.unlabelled)
        for stream in others:
            if stream.image_shape != shape:
                raise DataError(
                    f"stream '{stream.name}' has images of shape {stream.image_shape} but the "
                    f"target has {shape}: resize or convert channels so all streams agree."
                )
        if self.target.test.class_names != self.target.labelled.class_names:
            raise DataError(
                "the target test set and the labelled target set name different classes: "
                f"{self.target.test.class_names} vs {self.target.labelled.class_names}."
            )

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.target.labelled.image_shape

    @property
    def target_class_names(self) -> tuple[str, ...]:
        return self.target.labelled.class_names

    def train_dataset(
        self, global_batch_size: int, seed: int, max_shift: int = 0
    ) -> tf.data.Dataset:
        """An endless dataset of multi-stream batches (see the module docstring).

        Args:
            global_batch_size: examples a stream contributes to a step.
            seed: seeds the shuffling (and the augmentation) of every stream.
            max_shift: augmentation: translate every training image by up to
                this many pixels (edges mirrored), drawn from `seed`; 0 = off.
                Images only: keep 0 for clips.
        """
        if global_batch_size <= 0:
            raise DataError(f"global_batch_size must be positive, got {global_batch_size}.")
        if max_shift > 0 and len(self.image_shape) != KINDS["images"].rank:
            raise DataError(
                f"max_shift={max_shift} shifts images, but the streams hold clips of shape "
                f"{self.image_shape}: set data.max_shift = 0 (video trunks crop in time)."
            )

        def endless(dataset: tf.data.Dataset, offset: int) -> tf.data.Dataset:
            dataset = dataset.cache().shuffle(_SHUFFLE_BUFFER, seed=seed + offset).repeat()
            if max_shift > 0:
                seeds = tf.data.Dataset.random(seed=seed + offset).batch(2)
                dataset = tf.data.Dataset.zip((dataset, seeds)).map(
                    lambda example, pair: (random_shift(example[0], pair, max_shift), *example[1:]),
                    num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True,
                )
            return dataset.batch(global_batch_size, drop_remainder=True)

        element = {
            "sources": tuple(endless(s.dataset, i + 1) for i, s in enumerate(self.sources)),
            "target": endless(self.target.labelled.dataset, 0),
        }
        if self.target.unlabelled is not None and self.target.unlabelled.size:
            element["unlabelled"] = endless(self.target.unlabelled.dataset, 1000)
        return tf.data.Dataset.zip(element).prefetch(tf.data.AUTOTUNE)

    def test_dataset(self, batch_size: int) -> tf.data.Dataset:
        """The target test set as `(x, y)` batches, in order."""
        return self.target.test.dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
