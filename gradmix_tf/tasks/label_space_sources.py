"""Sources in the target's label space whose labels mean something else.

A development suite for label adapters (`GradMixOptions.label_adapter`) needs a
source that names the target's classes but labels them otherwise. Each source
here is the USPS test split (2,007 images of the digits 0-9, the `usps`
builder; its train split's 5-9 are another source of the task), 32x32x3,
with class names ``0``..``9`` (the target's), under one label relation:

- ``correct``: the USPS labels as they are;
- ``half_random``: half the labels (drawn once) replaced by a uniformly
  random digit (symmetric noise; a replaced label is right 1 time in 10);
- ``pair_flips``: 40% of each digit's images (drawn once) labelled as the
  next digit, c -> c + 1 (mod 10): pair confusions;
- ``reordered``: every label through one fixed permutation of the digits
  with no digit left in place (`REORDERING`): class ids in another order.

`relabel` applies a relation to label ids; the draws use fixed generators, so a
source is the same in every run whatever the seed.
"""

from __future__ import annotations

import numpy as np

from gradmix_tf.data.streams import DataError, LabelledStream
from gradmix_tf.datasets import loading

RELATIONS = ("correct", "half_random", "pair_flips", "reordered")
NUM_CLASSES = 10
STREAM = "usps_0_9"
REORDERING = (3, 7, 0, 9, 5, 8, 1, 2, 6, 4)
"""`reordered`: digit c is labelled REORDERING[c] (no fixed point)."""
SYMMETRIC_NOISE = 0.5
PAIR_FLIP_RATE = 0.4

_SEEDS = {"half_random": 20_201_205, "pair_flips": 20_201_206}


def relabel(labels, relation: str) -> np.ndarray:
    """The label ids `labels` [N] (digits 0-9) under `relation` (module docstring)."""
    labels = np.asarray(labels, np.int64)
    if relation == "correct":
        return labels.copy()
    if relation == "reordered":
        return np.asarray(REORDERING, np.int64)[labels]
    if relation not in _SEEDS:
        raise DataError(f"unknown label relation {relation!r}; known: {RELATIONS}.")
    rng = np.random.default_rng(_SEEDS[relation])
    noisy = labels.copy()
    if relation == "half_random":
        replaced = rng.random(len(labels)) < SYMMETRIC_NOISE
        noisy[replaced] = rng.integers(0, NUM_CLASSES, size=int(replaced.sum()))
        return noisy
    for c in range(NUM_CLASSES):  # pair_flips: exactly the rate of each class, drawn
        members = np.flatnonzero(labels == c)
        flipped = rng.choice(members, size=round(PAIR_FLIP_RATE * len(members)), replace=False)
        noisy[flipped] = (c + 1) % NUM_CLASSES
    return noisy


def usps_label_space_source(
    relation: str,
    image_shape=(32, 32, 3),
    max_per_class: int | None = None,
    **loading_options,
) -> LabelledStream:
    """The USPS test split (digits 0-9, named as the target's) under `relation`.

    Args:
        relation: one of `RELATIONS`.
        max_per_class: the first this many images of each digit.
        **loading_options: `data_dir`, `manual_dir`, `verify_checksums` of the
            `usps` builder (`loading.load_examples`).
    """
    if relation not in RELATIONS:
        raise DataError(f"unknown label relation {relation!r}; known: {RELATIONS}.")
    examples = loading.load_examples("usps", "test", **loading_options)
    examples = examples.take(loading.first_per_class(examples.labels, max_per_class))
    images = loading.convert_images(examples.images, image_shape)
    name = STREAM if relation == "correct" else f"{STREAM}_{relation}"
    class_names = [str(d) for d in range(NUM_CLASSES)]
    return LabelledStream.from_arrays(name, images, relabel(examples.labels, relation), class_names)
