"""Shared helpers of the model tests: a tiny trunk on 8x8x1 images, models, random batches."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from gradmix_tf.training.gradmix_model import GradMixModel

IMAGE_SHAPE = (8, 8, 1)
TARGET_CLASSES = ("a", "b", "c")
OTHER_CLASSES = ("x", "y")  # a source label space that gets a head of its own
LEARNING_RATE = 0.1


def tiny_trunk() -> keras.Sequential:
    """Conv2D(4) + Flatten + Dense(8): two mixing layers, plus the target head."""
    return keras.Sequential(
        [
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(8, activation="relu", name="dense"),
        ],
        name="trunk",
    )


def make_model(
    source_class_names=(TARGET_CLASSES,),
    target_class_names=TARGET_CLASSES,
    optimizer=None,
    seed=0,
    **options,
) -> GradMixModel:
    """A built and compiled model; the same seed gives the same initial weights."""
    keras.utils.set_random_seed(seed)
    model = GradMixModel(tiny_trunk(), target_class_names, source_class_names, **options)
    model.build((None, *IMAGE_SHAPE))
    model.compile(optimizer=optimizer or keras.optimizers.SGD(LEARNING_RATE))
    return model


def copy_of(model: GradMixModel, **options) -> GradMixModel:
    """A model like `model` (other options allowed) with exactly its weights and state."""
    twin = make_model(
        source_class_names=model.source_class_names,
        target_class_names=model.target_class_names,
        num_unlabelled=model.num_unlabelled,
        **options,
    )
    twin.set_weights(model.get_weights())
    return twin


def images(rng, count=4) -> tf.Tensor:
    return tf.constant(rng.normal(size=(count, *IMAGE_SHAPE)), tf.float32)


def labels(rng, num_classes, count=4) -> tf.Tensor:
    return tf.constant(rng.integers(0, num_classes, count), tf.int32)


def random_batch(source_class_names, seed=0, count=4, num_unlabelled=0) -> dict:
    """A multi-stream batch (the data contract of `gradmix_tf.data.streams`)."""
    rng = np.random.default_rng(seed)
    batch = {
        "sources": tuple(
            (images(rng, count), labels(rng, len(classes), count)) for classes in source_class_names
        ),
        "target": (images(rng, count), labels(rng, len(TARGET_CLASSES), count)),
    }
    if num_unlabelled:
        ids = tf.constant(rng.choice(num_unlabelled, count, replace=False), tf.int32)
        batch["unlabelled"] = (images(rng, count), ids)
    return batch


def train_step(model, batch, mode="eager"):
    """One `train_step`, eagerly or traced (as `fit` runs it); the logs as floats."""
    step = model.train_step if mode == "eager" else tf.function(model.train_step)
    return {name: float(value) for name, value in step(batch).items()}


def trainable_values(model) -> list[np.ndarray]:
    return [v.numpy() for v in model.trainable_variables]


def cross_entropy(logits, y) -> tf.Tensor:
    return keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)


def assert_logs_close(got: dict, expected: dict, rtol=1e-6, atol=1e-6):
    """The same log names, and every value close."""
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=rtol, atol=atol, err_msg=name)


MODES = ("eager", "graph")
