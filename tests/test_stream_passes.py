"""`gradient_memory`: recomputing each stream's gradient gives the step that keeping them gives."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf.errors import ConfigError
from gradmix_tf.training.gradmix_model import GradMixModel
from gradmix_tf.training.options import GradMixOptions
from tests.model_testing import (
    IMAGE_SHAPE,
    OTHER_CLASSES,
    TARGET_CLASSES,
    random_batch,
)

SOURCES = (TARGET_CLASSES, OTHER_CLASSES)  # one source on h_T, one with its own head
NUM_UNLABELLED = 6


def batch_norm_trunk(dropout=0.0) -> keras.Sequential:
    """Batch normalisation (batch statistics, moving statistics) and, with `dropout`, a seed."""
    return keras.Sequential(
        [
            keras.layers.Conv2D(4, 3, use_bias=False, name="conv"),  # BN cancels a bias
            keras.layers.BatchNormalization(momentum=0.5, name="bn"),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dropout(dropout, seed=1, name="dropout"),
            keras.layers.Dense(8, activation="relu", name="dense"),
        ],
        name="trunk",
    )


def make_model(gradient_memory, dropout=0.0, trunk=None, **options) -> GradMixModel:
    keras.utils.set_random_seed(0)
    model = GradMixModel(
        trunk or batch_norm_trunk(dropout),
        TARGET_CLASSES,
        SOURCES,
        num_unlabelled=NUM_UNLABELLED,
        gradient_memory=gradient_memory,
        **options,
    )
    model.build((None, *IMAGE_SHAPE))
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    model.pseudo_labels.assign([0, 1, 2, -1, 1, 0])
    model.pseudo_label_weights.assign([0.9, 0.8, 0.7, 0.0, 0.6, 1.0])
    return model


@pytest.mark.parametrize(
    "options",
    [
        {"rule": "persistent", "alignment": "cosine"},
        {"rule": "closed_form"},
        {"rule": "uniform", "adaptive_learning_rate": False},
    ],
    ids=["persistent", "closed_form", "uniform"],
)
def test_recompute_gives_the_stored_step(options):
    """Three steps on a batch-normalised trunk: the same trainable variables, mixing weights
    and logs. Every pass normalises with its own batch's statistics in both; the moving
    statistics take the same updates, the labelled target's first under "recompute"."""
    stored, recomputed = make_model("store", **options), make_model("recompute", **options)
    for seed in range(3):
        batch = random_batch(SOURCES, seed=seed, num_unlabelled=NUM_UNLABELLED)
        stored_logs = tf.function(stored.train_step)(batch)
        recomputed_logs = tf.function(recomputed.train_step)(batch)
    for name, value in stored_logs.items():
        np.testing.assert_allclose(recomputed_logs[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    for a, b in zip(stored.trainable_variables, recomputed.trainable_variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    np.testing.assert_allclose(recomputed.mixing_weights, stored.mixing_weights, atol=1e-6)
    moving = [v for v in stored.non_trainable_variables if "moving" in v.path]
    assert moving and all(np.abs(v.numpy() - v.numpy().flat[0]).max() > 0 for v in moving)


def test_a_second_pass_repeats_the_first():
    """`stream_gradients(batch, state)` with the state read before the first pass: the same
    batch statistics and dropout mask, so the same gradients, and the same state after."""
    model = make_model("recompute", dropout=0.5)
    stream = model._stream_batches(random_batch(SOURCES, seed=4, num_unlabelled=6))[0][1]
    step = model._step_context()
    state = model.network.layer_states(stream.head)
    first = step.stream_gradients(stream)
    after_first = [v.numpy() for v in model.non_trainable_variables]
    second = step.stream_gradients(stream, state)
    for a, b in zip(tf.nest.flatten(first), tf.nest.flatten(second)):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    for value, variable in zip(after_first, model.non_trainable_variables):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
    third = step.stream_gradients(stream)  # a new mask: the seed moved on
    assert max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(first[1], third[1])) > 0


@pytest.mark.parametrize("options", [{"rule": "pcgrad"}, {"rule": "lookahead"}])
def test_recompute_refuses_the_rules_that_read_the_gradients(options):
    with pytest.raises(ConfigError, match="gradient_memory='recompute' keeps only"):
        GradMixOptions(gradient_memory="recompute", **options)
    with pytest.raises(ConfigError, match="gradient_memory must be one of"):
        GradMixOptions(gradient_memory="disk")


@pytest.mark.parametrize("gradient_memory", ["store", "recompute"])
def test_each_pass_normalises_with_its_own_batch(gradient_memory):
    """Batch normalisation in a step: every pass (sources, P, target) normalises with its own
    batch's statistics (not the concatenated batch's, as joint training would), and the moving
    mean takes one update a pass: the sources, P, then the target ("store"); the target
    first ("recompute", whose second passes repeat the first, ending in the same state)."""
    model = make_model(gradient_memory, rule="persistent", alignment="cosine")
    batch = random_batch(SOURCES, seed=5, num_unlabelled=NUM_UNLABELLED)
    streams, target = model._stream_batches(batch)
    conv, bn = model.trunk.get_layer("conv"), model.trunk.get_layer("bn")
    passes = [*streams, target] if gradient_memory == "store" else [target, *streams]
    expected_mean = bn.moving_mean.numpy()
    for stream in passes:  # moving = momentum * moving + (1 - momentum) * batch mean
        batch_mean = tf.reduce_mean(conv(stream.x), axis=[0, 1, 2]).numpy()
        expected_mean = 0.5 * expected_mean + 0.5 * batch_mean
    trunk_values = [v.value for v in model.trunk.trainable_variables]
    trunk_state = [tf.identity(v.value) for v in model.trunk.non_trainable_variables]

    def loss_with_batch_statistics_of(x, stream, rows):
        """The stream's loss when its examples (`rows` of `x`) are normalised with x's."""
        features = model.trunk.stateless_call(trunk_values, trunk_state, x, training=True)[0]
        logits = model.heads[stream.head](features[rows])
        return float(
            tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(stream.labels, logits, True)
            )
        )

    sources = streams[:2]
    pooled_x = tf.concat([s.x for s in sources], axis=0)
    own = [loss_with_batch_statistics_of(s.x, s, slice(0, 4)) for s in sources]
    pooled = [
        loss_with_batch_statistics_of(pooled_x, s, slice(4 * k, 4 * (k + 1)))
        for k, s in enumerate(sources)
    ]
    logs = tf.function(model.train_step)(batch)
    np.testing.assert_allclose(bn.moving_mean.numpy(), expected_mean, rtol=1e-5, atol=1e-6)
    for k, name in enumerate(model.source_names):
        np.testing.assert_allclose(float(logs[f"loss/{name}"]), own[k], rtol=1e-5)
        assert abs(own[k] - pooled[k]) > 1e-4, (own, pooled)
