"""Dataset name + split spec -> the streams of the data contract.

The one place where a prepared TFDS dataset becomes `LabelledStream`,
`UnlabelledStream` or `TargetSplit` (`gradmix_tf.data.streams`):

- `load_examples`: every example of a split as numpy arrays, in the order of
  the dataset's `id` feature when it has one (file order for this package's
  builders), cached in memory for the process;
- class subsets and relabelling (`classes=(5, 6, 7, 8, 9)` -> labels 0..4
  named "5".."9"), a cap on examples a class (the first ones, in id order);
- image conversion so streams agree: channels (grey <-> RGB) and size
  (`tf.image.resize`, or `"pad"`: zero padding around the centre);
- `target_split`: a fixed test part (its own split, or a stratified part of
  the pool drawn from `test_seed`, the same for every `seed`), then the k-shot
  labelled set drawn from `seed` and the unlabelled remainder with ids.

Streams hold their images in memory (float32), which suits digit-sized
datasets; for larger ones wrap `builder.as_dataset(...)` with
`LabelledStream.from_dataset` yourself.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from gradmix_tf.data.streams import DataError, LabelledStream, TargetSplit, UnlabelledStream
from gradmix_tf.datasets.preparation import prepared_builder

_READ_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class Examples:
    """The examples of one split, read-only.

    Attributes:
        images: `[N, ...]` as stored (uint8 for images); a 1-D object array
            of `[H_i, W_i, C]` arrays when the dataset's images differ in size.
        labels: int64 `[N]`.
        ids: `[N]` strings when the dataset has an `id` feature, else None.
        class_names: the names of the label ids of the dataset.
    """

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray | None
    class_names: tuple[str, ...]

    def take(self, indices) -> Examples:
        indices = np.asarray(indices, dtype=np.int64)
        ids = None if self.ids is None else self.ids[indices]
        return Examples(self.images[indices], self.labels[indices], ids, self.class_names)


def _object_array(items: list) -> np.ndarray:
    """A 1-D object array of `items` (numpy arrays of possibly different shapes)."""
    array = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        array[i] = item
    return array


def _read_one_by_one(examples, keys, image_key) -> dict[str, np.ndarray]:
    """Reads unbatched examples; the images become a 1-D object array."""
    parts = {k: [] for k in keys}
    for example in examples:
        for k in keys:
            parts[k].append(example[k])
    return {k: _object_array(v) if k == image_key else np.asarray(v) for k, v in parts.items()}


@functools.lru_cache(maxsize=8)
def _load_cached(dataset, split, data_dir, manual_dir, download, image_key, label_key, kwargs):
    import tensorflow_datasets as tfds

    builder = prepared_builder(
        dataset, data_dir=data_dir, manual_dir=manual_dir, download=download, **dict(kwargs)
    )
    features = builder.info.features
    for key in (image_key, label_key):
        if key not in features:
            raise DataError(
                f"dataset '{dataset}' has no feature {key!r}; its features: {sorted(features)}."
            )
    keys = [image_key, label_key] + (["id"] if "id" in features else [])
    data = builder.as_dataset(split=split, shuffle_files=False)
    data = data.map(lambda example: {k: example[k] for k in keys})
    if None in features[image_key].shape:  # images (or clips) of different sizes
        arrays = _read_one_by_one(tfds.as_numpy(data), keys, image_key)
    else:
        parts = {k: [] for k in keys}
        for batch in tfds.as_numpy(data.batch(_READ_BATCH)):
            for k in keys:
                parts[k].append(batch[k])
        arrays = {k: np.concatenate(v) for k, v in parts.items() if v}
    if not len(arrays.get(label_key, ())):
        raise DataError(f"dataset '{dataset}' split {split!r} is empty.")
    ids = arrays.get("id")
    order = np.argsort(ids, kind="stable") if ids is not None else np.arange(len(arrays[label_key]))
    label_feature = features[label_key]
    labels = arrays[label_key][order].astype(np.int64)
    if isinstance(label_feature, tfds.features.ClassLabel):
        class_names = tuple(label_feature.names)
    else:
        class_names = tuple(str(i) for i in range(int(labels.max()) + 1))
    examples = Examples(
        arrays[image_key][order],
        labels,
        None if ids is None else ids[order].astype(str),
        class_names,
    )
    for array in (examples.images, examples.labels, examples.ids):
        if array is not None:
            array.flags.writeable = False
    return examples


def load_examples(
    dataset: str,
    split: str = "train",
    *,
    data_dir=None,
    manual_dir=None,
    download: bool = False,
    image_key: str = "image",
    label_key: str = "label",
    **builder_kwargs,
) -> Examples:
    """Every example of a split of a prepared (or preparable) dataset.

    Args:
        dataset: a TFDS name (`mnist`, `usps`, `hmdb51/split1`, ...).
        split: a TFDS split spec (`train`, `test`, `train[:50%]`, `train+test`).
        data_dir, manual_dir, download, builder_kwargs: see `prepared_builder`.
        image_key, label_key: the features to read.

    Returns:
        `Examples`, cached for the process (same arguments, same arrays).
    """
    return _load_cached(
        dataset,
        split,
        None if data_dir is None else str(data_dir),
        None if manual_dir is None else str(manual_dir),
        bool(download),
        image_key,
        label_key,
        tuple(sorted(builder_kwargs.items())),
    )


def select_classes(examples: Examples, classes: Sequence[int] | None) -> Examples:
    """Keeps the examples of `classes` and relabels them 0..len(classes)-1, in that order."""
    if classes is None:
        return examples
    classes = [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < len(examples.class_names)]
    if bad or len(set(classes)) != len(classes):
        raise DataError(
            f"classes {classes} must be distinct label ids of the dataset, in "
            f"[0, {len(examples.class_names) - 1}] (bad: {bad})."
        )
    lookup = np.full(len(examples.class_names), -1, dtype=np.int64)
    lookup[classes] = np.arange(len(classes))
    keep = np.flatnonzero(lookup[examples.labels] >= 0)
    kept = examples.take(keep)
    return Examples(
        kept.images,
        lookup[kept.labels],
        kept.ids,
        tuple(examples.class_names[c] for c in classes),
    )


def first_per_class(labels, max_per_class: int | None) -> np.ndarray:
    """Indices of the first `max_per_class` examples of each class, in order (all when None)."""
    labels = np.asarray(labels)
    if max_per_class is None:
        return np.arange(len(labels))
    keep = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        keep[np.flatnonzero(labels == c)[:max_per_class]] = True
    return np.flatnonzero(keep)


def stratified_part(labels, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draws `per_class` indices a class from `seed`: (part, rest), both sorted."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    part = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) <= per_class:
            raise DataError(
                f"class {c} has {len(members)} examples; a test part of {per_class} a class "
                "would leave none for training. Lower test_per_class."
            )
        part.append(rng.choice(members, size=per_class, replace=False))
    part = np.sort(np.concatenate(part))
    return part, np.setdiff1d(np.arange(len(labels)), part)


def convert_images(images, image_shape=None, resize_method: str = "bilinear") -> np.ndarray:
    """Images as float32 in [0, 1] with `image_shape` = (H, W, C), C in {1, 3}.

    Integer images are divided by 255. Channels: grey is repeated to RGB, RGB
    becomes grey by `tf.image.rgb_to_grayscale`. Size: `tf.image.resize` with
    `resize_method`, or `"pad"` (zero padding around the centre, for e.g.
    MNIST 28x28 -> 32x32 with the digit pixels kept). Leading axes beyond
    the batch (video frames) are kept. A 1-D object array (images of
    different sizes, as `load_examples` returns for e.g. DomainNet) is
    converted image by image and stacked.
    """
    import tensorflow as tf

    images = np.asarray(images)
    if images.dtype == object:  # images of different sizes, one by one
        if image_shape is None:
            raise DataError("images of different sizes: give image_shape to resize them.")
        converted = [convert_images(image[None], image_shape, resize_method)[0] for image in images]
        if len({c.shape for c in converted}) > 1:
            raise DataError(
                f"after conversion to {tuple(image_shape)} the examples still differ in shape "
                f"({sorted({c.shape for c in converted})[:3]} ...): e.g. clips of different "
                "lengths; sample a fixed number of frames first."
            )
        return np.stack(converted) if converted else np.zeros((0, *image_shape), np.float32)
    if np.issubdtype(images.dtype, np.integer):
        images = images.astype(np.float32) / np.float32(255.0)
    images = images.astype(np.float32, copy=False)
    if image_shape is None:
        return images
    height, width, channels = (int(d) for d in image_shape)
    lead = images.shape[:-3]
    flat = images.reshape((-1, *images.shape[-3:]))
    if flat.shape[-1] != channels:
        if flat.shape[-1] == 1 and channels == 3:
            flat = np.repeat(flat, 3, axis=-1)
        elif flat.shape[-1] == 3 and channels == 1:
            flat = tf.image.rgb_to_grayscale(flat).numpy()
        else:
            raise DataError(f"cannot convert {flat.shape[-1]} channels to {channels}.")
    if flat.shape[1:3] != (height, width):
        if resize_method == "pad":
            top, left = height - flat.shape[1], width - flat.shape[2]
            if top < 0 or left < 0:
                raise DataError(f"cannot pad images of {flat.shape[1:3]} to {(height, width)}.")
            pad = ((0, 0), (top // 2, top - top // 2), (left // 2, left - left // 2), (0, 0))
            flat = np.pad(flat, pad)
        else:
            flat = tf.image.resize(flat, (height, width), method=resize_method).numpy()
            flat = np.clip(flat, 0.0, 1.0)
    return flat.reshape((*lead, height, width, channels)).astype(np.float32, copy=False)


def _subset(dataset, split, classes, max_per_class, loading) -> Examples:
    examples = select_classes(load_examples(dataset, split, **loading), classes)
    return examples.take(first_per_class(examples.labels, max_per_class))


def labelled_stream(
    dataset: str,
    split: str = "train",
    *,
    name: str | None = None,
    classes: Sequence[int] | None = None,
    max_per_class: int | None = None,
    image_shape: Sequence[int] | None = None,
    resize_method: str = "bilinear",
    **loading,
) -> LabelledStream:
    """A labelled source stream from a dataset split.

    Args:
        dataset, split: a TFDS name and split spec (see `load_examples`).
        name: the stream's name (default: the dataset name).
        classes: keep these label ids, relabelled 0..len-1 in this order
            (their class names follow); None keeps all.
        max_per_class: keep the first this many examples a class.
        image_shape, resize_method: see `convert_images`.
        **loading: `data_dir`, `manual_dir`, `download`, `image_key`,
            `label_key` and builder kwargs (see `load_examples`).
    """
    examples = _subset(dataset, split, classes, max_per_class, loading)
    images = convert_images(examples.images, image_shape, resize_method)
    return LabelledStream.from_arrays(
        name or dataset.replace("/", "_"), images, examples.labels, examples.class_names
    )


def unlabelled_stream(
    dataset: str,
    split: str = "train",
    *,
    name: str | None = None,
    classes: Sequence[int] | None = None,
    max_per_class: int | None = None,
    image_shape: Sequence[int] | None = None,
    resize_method: str = "bilinear",
    **loading,
) -> UnlabelledStream:
    """An unlabelled stream (ids 0..N-1 in id order); true labels kept for precision only."""
    examples = _subset(dataset, split, classes, max_per_class, loading)
    images = convert_images(examples.images, image_shape, resize_method)
    return UnlabelledStream.from_arrays(
        name or f"{dataset.replace('/', '_')}_unlabelled", images, examples.labels
    )


def target_split(
    dataset: str,
    *,
    shots_per_class: int | None,
    seed: int,
    train_split: str = "train",
    test_split: str | None = "test",
    test_per_class: int | None = None,
    test_seed: int = 0,
    take_first: int | None = None,
    name: str | None = None,
    classes: Sequence[int] | None = None,
    max_per_class: int | None = None,
    image_shape: Sequence[int] | None = None,
    resize_method: str = "bilinear",
    **loading,
) -> TargetSplit:
    """The target: a fixed test set, k-shot labelled and unlabelled sets from a seed.

    Args:
        shots_per_class: labelled examples a class, drawn from `seed`; the
            rest of the pool is the unlabelled set. None labels the whole pool.
        seed: draws only the labelled / unlabelled split of the pool.
        train_split: the split that makes the pool.
        test_split: the split of the test set; None carves a stratified test
            part of `test_per_class` a class out of the pool, drawn from
            `test_seed` (the same for every `seed`).
        take_first: use only the first this many examples of `train_split`
            (in id order), e.g. a partial release.
        max_per_class: cap on examples a class of the pool and of the test set.
        Others: see `labelled_stream`.
    """
    name = name or dataset.replace("/", "_")
    examples = load_examples(dataset, train_split, **loading)
    if take_first is not None:
        examples = examples.take(np.arange(min(take_first, len(examples.labels))))
    pool = select_classes(examples, classes)
    if test_split is None:
        if not test_per_class:
            raise DataError("target_split: with test_split=None, give test_per_class.")
        test_part, rest = stratified_part(pool.labels, test_per_class, test_seed)
        test, pool = pool.take(test_part), pool.take(rest)
    else:
        test = select_classes(load_examples(dataset, test_split, **loading), classes)
    test = test.take(first_per_class(test.labels, max_per_class))
    pool = pool.take(first_per_class(pool.labels, max_per_class))
    convert = functools.partial(
        convert_images, image_shape=image_shape, resize_method=resize_method
    )
    return TargetSplit.from_arrays(
        convert(pool.images),
        pool.labels,
        convert(test.images),
        test.labels,
        pool.class_names,
        shots_per_class=shots_per_class,
        seed=seed,
        name=name,
    )
