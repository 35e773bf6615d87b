"""`mixing.stream_gradients`: products taken once serve the rule, the checks and rho."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf.mixing import weights
from gradmix_tf.mixing.stream_gradients import StackedStreamGradients, StreamGradients

SHAPES = ((3, 2), (2,), (4,))
LAYER_IDS = [0, 0, 1]  # variables 0 and 1 are one layer


def random_gradients(num_streams, seed=0):
    rng = np.random.default_rng(seed)

    def grads():
        return [tf.constant(rng.normal(size=s), tf.float32) for s in SHAPES]

    return [grads() for _ in range(num_streams)], grads()


def test_products_by_hand():
    gradients = StreamGradients(
        [[tf.constant([1.0, 2.0]), tf.constant([3.0])]],
        [tf.constant([0.0, 1.0]), tf.constant([-1.0])],
        [0, 0],
        1,
    )
    dots, target_sq, stream_sq = gradients.layer_products()
    np.testing.assert_array_equal(dots, [[-1.0]])  # 2 - 3
    np.testing.assert_array_equal(target_sq, [2.0])
    np.testing.assert_array_equal(stream_sq, [[14.0]])
    np.testing.assert_array_equal(gradients.squared_norms(), [14.0, 2.0])
    # G = 2 g_1 + 0.5 g_T: <G, g_T> = 2 (-1) + 0.5 (2)
    mixed_target, target_total = gradients.mixed_target_product(tf.constant([[2.0]]), 0.5)
    assert float(mixed_target) == -1.0 and float(target_total) == 2.0


def test_products_are_taken_once():
    streams, target = random_gradients(2)
    gradients = StreamGradients(streams, target, LAYER_IDS, 2)
    assert gradients.variable_products is gradients.variable_products
    assert gradients.layer_products() is gradients.layer_products()


@pytest.mark.parametrize("stacked", [False, True], ids=["stored", "stacked"])
@pytest.mark.parametrize("num_streams", [0, 1, 3])
def test_rho_equals_the_cosine_of_the_mixed_gradient(num_streams, stacked):
    """rho from the products and G's squares, and from stacked gradients' Gram matrices
    alone."""
    streams, target = random_gradients(num_streams, seed=1)
    mixing_weights = tf.constant(
        np.random.default_rng(2).uniform(-0.5, 1.0, size=(num_streams, 2)), tf.float32
    )
    gradients = StreamGradients(streams, target, LAYER_IDS, 2)
    if stacked:
        flat = [
            tf.stack([tf.reshape(g[v], [-1]) for g in [*streams, target]])
            for v in range(len(SHAPES))
        ]
        gradients = StackedStreamGradients(flat, SHAPES, LAYER_IDS, 2)
    mixed = weights.mix_gradients(streams, mixing_weights, LAYER_IDS, target, 0.7)
    rho = gradients.batch_importance(lambda: mixed, mixing_weights, 0.7)
    flat_mixed = np.concatenate([np.ravel(m) for m in mixed])
    flat_target = np.concatenate([np.ravel(t) for t in target])
    cosine = flat_mixed @ flat_target / np.linalg.norm(flat_mixed) / np.linalg.norm(flat_target)
    assert cosine > 0.1
    np.testing.assert_allclose(rho, cosine, rtol=1e-5, atol=1e-6)
    norms = [sum(float(tf.reduce_sum(g * g)) for g in gs) for gs in [*streams, target]]
    np.testing.assert_allclose(gradients.squared_norms(), norms, rtol=1e-6)
