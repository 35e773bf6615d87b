"""The XLA-compiled mixing-weight solve equals the plain one, alone and inside a step."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from absl.testing import parameterized
from test_gradmix_model import OTHER_CLASSES, TARGET_CLASSES, make_model, random_batch

from gradmix_tf.mixing import weights
from gradmix_tf.training.gradmix_model import GradMixModel

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


class JitSolveTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.product(
        alignment=weights.ALIGNMENTS,
        granularity=weights.GRANULARITIES,
        normalization=weights.NORMALIZATIONS,
    )
    def test_jit_solve_equals_the_plain_solve(self, alignment, granularity, normalization):
        dots, target_sq, stream_sq, layer_ids = random_products(seed=len(alignment + granularity))
        options = {
            "alignment": alignment,
            "granularity": granularity,
            "normalization": normalization,
            "weight_total": 2.0,
        }
        plain = weights.solve_mixing_weights(dots, target_sq, stream_sq, layer_ids, 4, **options)
        jit = weights.solve_mixing_weights_jit(dots, target_sq, stream_sq, layer_ids, 4, **options)
        self.assertAllClose(jit[0], plain[0], rtol=1e-6, atol=1e-7)
        self.assertAllClose(jit[1], plain[1], rtol=1e-6, atol=1e-7)
        self.assertAllEqual(jit[0][-1], tf.zeros([4]))  # no gradient, no weight
        if normalization == "per_layer":
            totals = tf.reduce_sum(jit[0], axis=0).numpy()
            self.assertAllClose(totals[totals > 0], np.full([(totals > 0).sum()], 2.0))

    def test_jit_is_compiled(self):
        """The XLA version compiles to one XLA program (HLO), not to a TF graph."""
        dots, target_sq, stream_sq, layer_ids = random_products(seed=0)
        hlo = weights.solve_mixing_weights_jit.experimental_get_compiler_ir(
            dots, target_sq, stream_sq, layer_ids, 4, "dot", "layer", "per_layer", 1.0
        )(stage="hlo")
        self.assertIn("HloModule", hlo)

    def test_model_with_jit_solve_takes_the_same_step(self):
        plain = make_model(SOURCES, seed=3)
        jit = make_model(SOURCES, seed=3, jit_mixing_weights=True)
        self.assertTrue(GradMixModel.from_config(jit.get_config()).options.jit_mixing_weights)
        for seed in range(3):
            data = random_batch(SOURCES, seed=seed)
            plain_logs = tf.function(plain.train_step)(data)
            jit_logs = tf.function(jit.train_step)(data)
            self.assertAllClose(jit.mixing_weights, plain.mixing_weights, atol=1e-6)
            self.assertAllClose(jit_logs["rho"], plain_logs["rho"], atol=1e-6)
        self.assertGreater(float(tf.math.reduce_std(plain.mixing_weights)), 0.01)
        for got, expected in zip(jit.trainable_variables, plain.trainable_variables):
            self.assertAllClose(got, expected, atol=1e-6, msg=got.path)
