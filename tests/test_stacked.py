"""`mixing.stacked`: the stacked products, mix and rho equal the per-variable sums."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf.mixing import adaptive_lr, stacked, weights

SHAPES = ((3, 2), (2,), (4,), (1, 1))
LAYER_IDS = [0, 0, 2, 1]  # variables 0 and 1 are one layer


def random_gradients(num_streams, seed=0):
    rng = np.random.default_rng(seed)

    def grads():
        return [tf.constant(rng.normal(size=s), tf.float32) for s in SHAPES]

    return [grads() for _ in range(num_streams)], grads()


def test_stacks_and_gram_by_hand():
    streams = [[tf.constant([[1.0, 2.0]]), tf.constant([3.0])]]
    target = [tf.constant([[0.0, 1.0]]), tf.constant([-1.0])]
    stacks = stacked.stack_gradients(streams, target)
    np.testing.assert_array_equal(stacks[0], [[1.0, 2.0], [0.0, 1.0]])
    gram = stacked.layer_gram(stacks, [0, 1], 2)
    np.testing.assert_array_equal(gram[0], [[5.0, 2.0], [2.0, 1.0]])
    np.testing.assert_array_equal(gram[1], [[9.0, -3.0], [-3.0, 1.0]])
    dots, target_sq, stream_sq = stacked.layer_products(gram)
    np.testing.assert_array_equal(dots, [[2.0, -3.0]])
    np.testing.assert_array_equal(target_sq, [1.0, 1.0])
    np.testing.assert_array_equal(stream_sq, [[5.0, 9.0]])


@pytest.mark.parametrize("num_streams", [1, 3])
def test_products_equal_the_per_variable_products(num_streams):
    streams, target = random_gradients(num_streams)
    gram = stacked.layer_gram(stacked.stack_gradients(streams, target), LAYER_IDS, 3)
    dots, target_sq, stream_sq = weights.per_variable_products(target, streams)
    ids = tf.constant(LAYER_IDS)
    expected = [weights.layer_sums(x, ids, 3) for x in (dots, target_sq, stream_sq)]
    for got, want in zip(stacked.layer_products(gram), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("num_streams", [0, 1, 3])
def test_mix_and_rho_equal_the_per_variable_ones(num_streams):
    streams, target = random_gradients(num_streams, seed=1)
    mixing_weights = tf.constant(
        np.random.default_rng(2).uniform(size=(num_streams, 3)), tf.float32
    )
    stacks = stacked.stack_gradients(streams, target)
    coefficients = stacked.mixing_coefficients(mixing_weights, 0.7)
    mixed = stacked.mix_stacked(stacks, coefficients, LAYER_IDS, SHAPES)
    expected = weights.mix_gradients(streams, mixing_weights, LAYER_IDS, target, 0.7)
    for got, want in zip(mixed, expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    gram = stacked.layer_gram(stacks, LAYER_IDS, 3)
    np.testing.assert_allclose(
        adaptive_lr.batch_importance_from_gram(gram, coefficients),
        adaptive_lr.batch_importance(expected, target),
        rtol=1e-6,
        atol=1e-6,
    )


def test_unstack_gives_back_the_gradients():
    streams, target = random_gradients(2)
    got = stacked.StackedGradients(
        stacked.stack_gradients(streams, target), tf.zeros([3, 3, 3]), SHAPES
    )
    got_streams, got_target = got.stream_gradients()
    assert got.num_streams == 2
    for want, have in zip([*streams, target], [*got_streams, got_target]):
        for w, h in zip(want, have):
            np.testing.assert_array_equal(w, h)
