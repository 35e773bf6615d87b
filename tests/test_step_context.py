"""The step's helpers on a `StepContext` made from a few layers, without a `GradMixModel`."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf.rules import StreamBatch, make_rule
from gradmix_tf.training.options import GradMixOptions
from gradmix_tf.training.step_context import StepContext, StreamNetwork, cross_entropy
from gradmix_tf.training.step_guard import StepGuard
from gradmix_tf.training.stream_passes import make_stream_passes


def context(skips_nonfinite: bool = False) -> StepContext:
    """A Dense trunk (4 -> 5), the target head (3 classes) and a source head (2)."""
    keras.utils.set_random_seed(0)
    trunk, target_head, source_head = (
        keras.layers.Dense(5),
        keras.layers.Dense(3),
        keras.layers.Dense(2),
    )
    trunk.build((None, 4))
    target_head.build((None, 5))
    source_head.build((None, 5))
    network = StreamNetwork(trunk, [target_head, source_head])
    skipped = keras.Variable(0, dtype="int64", trainable=False)
    guard = StepGuard(None, skipped, ("same", "other"), skips_nonfinite)
    return StepContext(network, guard, mixing_layer_ids=(0, 0, 1, 1), num_mixing_layers=2)


def batches():
    rng = np.random.default_rng(0)

    def batch(classes, head):
        x = tf.constant(rng.normal(size=(6, 4)), tf.float32)
        return StreamBatch(x, tf.constant(rng.integers(0, classes, 6), tf.int32), head)

    return [batch(3, 0), batch(2, 1)], batch(3, 0)


def by_hand(step: StepContext, batch: StreamBatch):
    """The stream's mean loss and its gradients on the target's path, with one tape."""
    network = step.network
    with tf.GradientTape() as tape:
        logits = network.heads[batch.head](network.trunk(batch.x))
        loss = tf.reduce_mean(cross_entropy(batch.labels, logits))
    grads = tape.gradient(loss, network.path_variables)
    return loss, [
        tf.zeros_like(v) if g is None else g for g, v in zip(grads, network.path_variables)
    ]


@pytest.mark.parametrize("gradient_memory", ["store", "recompute", "one_pass"])
def test_the_passes_give_each_streams_gradient_and_the_mix(gradient_memory):
    step = context()
    streams, target = batches()
    result = make_stream_passes(gradient_memory).run(step, streams, target)
    dots, _, _ = result.gradients.layer_products()
    _, target_grads = by_hand(step, target)
    for s, stream in enumerate(streams):
        loss, grads = by_hand(step, stream)
        np.testing.assert_allclose(result.losses[s], loss, rtol=1e-5)
        products = [float(tf.reduce_sum(g * t)) for g, t in zip(grads, target_grads)]
        by_layer = [products[0] + products[1], products[2] + products[3]]
        np.testing.assert_allclose(dots[s], by_layer, rtol=1e-4, atol=1e-6)
    assert float(tf.reduce_max(tf.abs(result.head_grads[1][0]))) > 0  # the source head trains
    mixed = result.mix(tf.constant([[1.0, 0.5], [2.0, 0.0]]), 0.5)
    (_, same), (_, other), (_, target_grads) = (
        by_hand(step, streams[0]),
        by_hand(step, streams[1]),
        by_hand(step, target),
    )
    for v, layer in enumerate((0, 0, 1, 1)):
        expected = (
            [1.0, 0.5][layer] * same[v] + [2.0, 0.0][layer] * other[v] + 0.5 * target_grads[v]
        )
        np.testing.assert_allclose(mixed[v], expected, rtol=1e-4, atol=1e-6)


def test_a_rule_mixes_on_the_context():
    """The closed form's weights: the source on h_T aligns with the target, the other
    stream's h_T gradient is zero, so its head layer's weight is zero."""
    step = context()
    streams, target = batches()
    gradients = make_stream_passes("store").run(step, streams, target).gradients
    mix = make_rule(GradMixOptions(rule="closed_form", normalization="none")).mix(
        step, streams, target, gradients
    )
    weights = mix.weights.numpy()
    assert weights.shape == (2, 2) and weights[0, 1] > 0 and weights[1, 1] == 0


def test_the_guard_counts_a_skipped_batch():
    step = context(skips_nonfinite=True)
    applied = keras.Variable(0.0, trainable=False)
    nonfinite = step.guard.nonfinite_streams(
        [tf.constant(1.0), tf.constant(np.nan, tf.float32), tf.constant(1.0)],
        tf.zeros([3]),
        [[], []],
    )
    step.guard.update_if_finite(nonfinite, lambda: applied.assign(1.0), (), [tf.zeros([1])])
    assert int(step.guard.skipped.numpy()) == 1 and float(applied.numpy()) == 0.0
