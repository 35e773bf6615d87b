"""Tasks given by import path (`--config.data.task=tests.task_helpers:shapes_task`) in the tests."""

from __future__ import annotations

import numpy as np

from gradmix_tf.data.streams import LabelledStream, MultiStreamData, TargetSplit

IMAGE_SHAPE = (16, 16, 3)
TARGET_CLASSES = ("round", "square", "spiky")
SOURCE_CLASSES = ("light", "dark")


def _images(labels, seed: int, classes: int) -> np.ndarray:
    """uint8 images whose shade tells the class apart, with noise."""
    rng = np.random.default_rng(seed)
    shades = 40 + 170 * np.asarray(labels) / max(classes - 1, 1)
    noise = rng.normal(0, 15, (len(labels), *IMAGE_SHAPE))
    return np.clip(shades[:, None, None, None] + noise, 0, 255).astype(np.uint8)


def shapes_task(
    seed: int = 0,
    shots_per_class: int | None = 5,
    *,
    max_per_class: int | None = None,
    per_class: int = 8,
) -> MultiStreamData:
    """One source of 2 classes and a 3-class target, `per_class` images a class in each part
    (at most `max_per_class`)."""
    per_class = min(per_class, max_per_class or per_class)
    source_labels = np.repeat(np.arange(len(SOURCE_CLASSES)), per_class)
    source = LabelledStream.from_arrays(
        "shades",
        _images(source_labels, 1, len(SOURCE_CLASSES)),
        source_labels,
        SOURCE_CLASSES,
    )
    labels = np.repeat(np.arange(len(TARGET_CLASSES)), per_class)
    target = TargetSplit.from_arrays(
        _images(labels, 2, len(TARGET_CLASSES)),
        labels,
        _images(labels, 3, len(TARGET_CLASSES)),
        labels,
        TARGET_CLASSES,
        shots_per_class=shots_per_class,
        seed=seed,
    )
    return MultiStreamData([source], target)


def not_a_task(seed: int = 0, shots_per_class: int | None = 5, *, max_per_class=None):
    """Returns the streams' pieces, not a MultiStreamData."""
    return {"sources": [], "target": None}


NOT_CALLABLE = 3
