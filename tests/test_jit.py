"""The XLA-compiled mixing-weight solve equals the plain one, alone and inside a step."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf.mixing import weights
from gradmix_tf.training.gradmix_model import GradMixModel
from tests.model_testing import OTHER_CLASSES, TARGET_CLASSES, make_model, random_batch

SOURCES = (TARGET_CLASSES, OTHER_CLASSES, OTHER_CLASSES)


def random_products(seed, num_streams=3, num_variables=7):
    """Products of random gradients: dots of both signs, one stream without gradient."""
    rng = np.random.default_rng(seed)
    target = rng.normal(size=(num_variables, 5)).astype(np.float32)
    streams = rng.normal(size=(num_streams, num_variables, 5)).astype(np.float32)
    streams[-1] = 0.0  # a stream with no gradient on the path
    dots = np.einsum("vd,svd->sv", target, streams)
    return (
        tf.constant(dots),
        tf.constant((target**2).sum(-1)),
        tf.constant((streams**2).sum(-1)),
        tf.constant([0, 0, 1, 1, 2, 3, 3], tf.int32),
    )


# ------------------------------------------------------------------ jit solve
@pytest.mark.parametrize("normalization", weights.NORMALIZATIONS)
@pytest.mark.parametrize("granularity", weights.GRANULARITIES)
@pytest.mark.parametrize("alignment", weights.ALIGNMENTS)
def test_jit_solve_equals_the_plain_solve(alignment, granularity, normalization):
    dots, target_sq, stream_sq, layer_ids = random_products(seed=len(alignment + granularity))
    options = {
        "alignment": alignment,
        "granularity": granularity,
        "normalization": normalization,
        "weight_total": 2.0,
    }
    products = [weights.layer_sums(p, layer_ids, 4) for p in (dots, target_sq, stream_sq)]
    plain = weights.solve_layer_weights(*products, **options)
    jit = weights.solve_layer_weights_jit(*products, **options)
    np.testing.assert_allclose(jit[0], plain[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jit[1], plain[1], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(jit[0][-1], tf.zeros([4]))  # no gradient, no weight
    if normalization == "per_layer":
        totals = tf.reduce_sum(jit[0], axis=0).numpy()
        np.testing.assert_allclose(
            totals[totals > 0], np.full([(totals > 0).sum()], 2.0), rtol=1e-6, atol=1e-6
        )


def test_jit_is_compiled():
    """The XLA version compiles to one XLA program (HLO), not to a TF graph."""
    dots, target_sq, stream_sq, layer_ids = random_products(seed=0)
    products = [weights.layer_sums(p, layer_ids, 4) for p in (dots, target_sq, stream_sq)]
    hlo = weights.solve_layer_weights_jit.experimental_get_compiler_ir(
        *products, "dot", "layer", "per_layer", 1.0
    )(stage="hlo")
    assert "HloModule" in hlo


def test_model_with_jit_solve_takes_the_same_step():
    plain = make_model(SOURCES, seed=3)
    jit = make_model(SOURCES, seed=3, jit_mixing_weights=True)
    assert GradMixModel.from_config(jit.get_config()).options.jit_mixing_weights
    for seed in range(3):
        data = random_batch(SOURCES, seed=seed)
        plain_logs = tf.function(plain.train_step)(data)
        jit_logs = tf.function(jit.train_step)(data)
        np.testing.assert_allclose(jit.mixing_weights, plain.mixing_weights, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(jit_logs["rho"], plain_logs["rho"], rtol=1e-6, atol=1e-6)
    assert float(tf.math.reduce_std(plain.mixing_weights)) > 0.01
    for got, expected in zip(jit.trainable_variables, plain.trainable_variables):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6, err_msg=got.path)
