"""Tests of the pure mixing functions (`gradmix_tf.mixing`): steps 4-6 of docs/algorithm.md by hand."""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from gradmix_tf.mixing import adaptive_lr, lookahead, weights

# A hand-made 2-layer case. Variables 0 and 1 (a kernel [2] and a bias [1]) form
# layer 0, variable 2 (a kernel [2]) is layer 1. Two streams A and B.
LAYER_IDS = [0, 0, 1]
TARGET = [[1.0, 2.0], [1.0], [2.0, 0.0]]
STREAM_A = [[1.0, 0.0], [1.0], [1.0, 1.0]]
STREAM_B = [[0.0, 2.0], [1.0], [-1.0, 1.0]]
# u[s, l] = <g_T,l, g_s,l>:
#   A: layer 0: 1*1 + 2*0 + 1*1 = 2;  layer 1: 2*1 + 0*1 = 2
#   B: layer 0: 1*0 + 2*2 + 1*1 = 5;  layer 1: 2*(-1) + 0*1 = -2
HAND_U = [[2.0, 2.0], [5.0, -2.0]]
# Squared norms per layer: |T|^2 = [6, 4]; |A|^2 = [2, 2]; |B|^2 = [5, 2].
HAND_COSINE = [
    [2.0 / math.sqrt(12.0), 2.0 / math.sqrt(8.0)],
    [5.0 / math.sqrt(30.0), -2.0 / math.sqrt(8.0)],
]


def as_tensors(grads):
    return [tf.constant(g, tf.float32) for g in grads]


def solve(target=TARGET, streams=(STREAM_A, STREAM_B), layer_ids=LAYER_IDS, **options):
    """The closed-form weights and u for gradients given as nested lists."""
    dots, target_sq, stream_sq = weights.per_variable_products(
        as_tensors(target), [as_tensors(s) for s in streams]
    )
    return weights.solve_mixing_weights(
        dots,
        target_sq,
        stream_sq,
        tf.constant(layer_ids, tf.int32),
        max(layer_ids) + 1,
        **options,
    )


class ClosedFormTest(tf.test.TestCase, parameterized.TestCase):
    def test_per_variable_products_by_hand(self):
        dots, target_sq, stream_sq = weights.per_variable_products(
            as_tensors(TARGET), [as_tensors(STREAM_A), as_tensors(STREAM_B)]
        )
        self.assertAllClose(dots, [[1.0, 1.0, 2.0], [4.0, 1.0, -2.0]])
        self.assertAllClose(target_sq, [5.0, 1.0, 4.0])
        self.assertAllClose(stream_sq, [[1.0, 1.0, 2.0], [4.0, 1.0, 2.0]])

    def test_layer_sums(self):
        per_variable = tf.constant([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
        summed = weights.layer_sums(per_variable, tf.constant([0, 1, 0, 2]), 3)
        self.assertAllClose(summed, [[4.0, 2.0, 4.0], [12.0, 6.0, 8.0]])
        self.assertAllClose(weights.layer_sums(per_variable[0], [0, 1, 0, 2], 3), [4, 2, 4])

    @parameterized.named_parameters(
        # layer 0: w~ = (2, 5) / 7; layer 1: w~ = (2, 0) / 2.
        ("per_layer", "layer", "per_layer", 1.0, [[2 / 7, 1.0], [5 / 7, 0.0]]),
        ("per_layer_total_2", "layer", "per_layer", 2.0, [[4 / 7, 2.0], [10 / 7, 0.0]]),
        # all (s, l): w~ / 9, times L = 2 so the mean per-layer sum is 1.
        ("all", "layer", "all", 1.0, [[4 / 9, 4 / 9], [10 / 9, 0.0]]),
        ("all_total_3", "layer", "all", 3.0, [[12 / 9, 12 / 9], [30 / 9, 0.0]]),
        # none: w~ = max(u, 0) as is, whatever the total.
        ("none", "layer", "none", 5.0, [[2.0, 2.0], [5.0, 0.0]]),
        # stream: u summed over layers, A: 4, B: 3 -> (4, 3) / 7 in every layer.
        ("stream", "stream", "per_layer", 1.0, [[4 / 7, 4 / 7], [3 / 7, 3 / 7]]),
        ("stream_all", "stream", "all", 1.0, [[4 / 7, 4 / 7], [3 / 7, 3 / 7]]),
        ("stream_none", "stream", "none", 1.0, [[4.0, 4.0], [3.0, 3.0]]),
    )
    def test_weights_by_hand(self, granularity, normalization, weight_total, expected):
        mixing_weights, u = solve(
            granularity=granularity, normalization=normalization, weight_total=weight_total
        )
        self.assertAllClose(mixing_weights, expected)
        hand_u = np.array(HAND_U)
        if granularity == "stream":
            hand_u = np.tile(hand_u.sum(axis=1, keepdims=True), [1, 2])
        self.assertAllClose(u, hand_u)

    @parameterized.named_parameters(
        ("per_layer", "per_layer", 1.0),
        ("per_layer_num_streams", "per_layer", 2),
        ("all", "all", 1.0),
        ("all_num_streams", "all", 2),
    )
    def test_weight_total_is_the_per_layer_sum(self, normalization, weight_total):
        """per_layer: every layer with a positive u sums to the total; all: their mean does."""
        mixing_weights, _ = solve(normalization=normalization, weight_total=weight_total)
        layer_totals = tf.reduce_sum(mixing_weights, axis=0)
        if normalization == "per_layer":
            self.assertAllClose(layer_totals, [weight_total] * 2)
        else:
            self.assertAllClose(tf.reduce_mean(layer_totals), weight_total)

    def test_negative_alignment_gets_zero_weight(self):
        anti_target = [[-x for x in g] for g in TARGET]
        mixing_weights, u = solve(streams=(TARGET, anti_target))
        self.assertAllClose(u, [[6.0, 4.0], [-6.0, -4.0]])
        self.assertAllClose(mixing_weights, [[1.0, 1.0], [0.0, 0.0]])

    @parameterized.product(
        alignment=["dot", "cosine"],
        granularity=["layer", "stream"],
        normalization=["per_layer", "all", "none"],
    )
    def test_zero_rows_and_columns_give_zero_not_nan(self, alignment, granularity, normalization):
        zero = [[0.0, 0.0], [0.0], [0.0, 0.0]]
        no_layer_1 = [[1.0, 0.0], [1.0], [0.0, 0.0]]
        cases = {
            "all zero": (zero, (zero, zero)),
            "zero target": (zero, (STREAM_A, STREAM_B)),
            "zero stream": (TARGET, (zero, STREAM_A)),
            "zero layer": (no_layer_1, (STREAM_A, STREAM_B)),
        }
        for name, (target, streams) in cases.items():
            mixing_weights, u = solve(
                target=target,
                streams=streams,
                alignment=alignment,
                granularity=granularity,
                normalization=normalization,
            )
            self.assertAllEqual(np.isfinite(mixing_weights), np.ones([2, 2], bool), msg=name)
            self.assertAllEqual(np.isfinite(u), np.ones([2, 2], bool), msg=name)
            if name in ("all zero", "zero target"):
                self.assertAllEqual(mixing_weights, np.zeros([2, 2]), msg=name)
            if name == "zero stream":
                self.assertAllEqual(mixing_weights[0], [0.0, 0.0], msg=name)
            if name == "zero layer" and granularity == "layer":
                self.assertAllEqual(mixing_weights[:, 1], [0.0, 0.0], msg=name)

    def test_cosine_by_hand(self):
        mixing_weights, u = solve(alignment="cosine")
        self.assertAllClose(u, HAND_COSINE)
        cos = np.array(HAND_COSINE)
        expected_layer_0 = cos[:, 0] / cos[:, 0].sum()
        self.assertAllClose(mixing_weights, np.stack([expected_layer_0, [1.0, 0.0]], axis=1))

    @parameterized.parameters((1e-8, 1.0), (1.0, 1e-8), (1e-8, 1e-8), (1e3, 1e-3), (1e9, 1e9))
    def test_cosine_is_scale_free(self, target_scale, stream_scale):
        def scaled(grads, scale):
            return [[scale * x for x in g] for g in grads]

        streams = (scaled(STREAM_A, stream_scale), scaled(STREAM_B, 1.0))
        mixing_weights, u = solve(
            target=scaled(TARGET, target_scale), streams=streams, alignment="cosine"
        )
        reference_weights, _ = solve(alignment="cosine")
        self.assertAllClose(u, HAND_COSINE, rtol=1e-5)
        self.assertAllClose(mixing_weights, reference_weights, rtol=1e-5)

    def test_jit_solver_matches_eager(self):
        dots, target_sq, stream_sq = weights.per_variable_products(
            as_tensors(TARGET), [as_tensors(STREAM_A), as_tensors(STREAM_B)]
        )
        layer_ids = tf.constant(LAYER_IDS, tf.int32)
        for alignment in weights.ALIGNMENTS:
            eager = weights.solve_mixing_weights(
                dots, target_sq, stream_sq, layer_ids, 2, alignment=alignment
            )
            jit = weights.solve_mixing_weights_jit(
                dots, target_sq, stream_sq, layer_ids, 2, alignment=alignment
            )
            self.assertAllClose(eager, jit)

    def test_mix_gradients_by_hand(self):
        mixing_weights, _ = solve()  # [[2/7, 1], [5/7, 0]]
        mixed = weights.mix_gradients(
            [as_tensors(STREAM_A), as_tensors(STREAM_B)],
            mixing_weights,
            LAYER_IDS,
            as_tensors(TARGET),
            target_weight=1.0,
        )
        # v0 = 2/7 [1, 0] + 5/7 [0, 2] + [1, 2]; v1 = 2/7 + 5/7 + 1; v2 = [1, 1] + [2, 0].
        self.assertAllClose(mixed[0], [9 / 7, 24 / 7])
        self.assertAllClose(mixed[1], [2.0])
        self.assertAllClose(mixed[2], [3.0, 1.0])
        without_target = weights.mix_gradients(
            [as_tensors(STREAM_A)], tf.ones([1, 2]), LAYER_IDS, as_tensors(TARGET), 0.0
        )
        for got, expected in zip(without_target, STREAM_A):
            self.assertAllClose(got, expected)

    @parameterized.parameters(
        (weights.alignment_scores, (tf.ones([1, 1]), tf.ones([1]), tf.ones([1, 1]), "sine")),
        (weights.normalize_weights, (tf.ones([1, 1]), "softmax")),
    )
    def test_unknown_options_raise(self, function, args):
        with self.assertRaisesRegex(ValueError, "must be one of"):
            function(*args)

    def test_unknown_granularity_raises(self):
        with self.assertRaisesRegex(ValueError, "granularity must be one of"):
            solve(granularity="variable")


def _network_and_gradients():
    """A 3-layer network, its target loss and the gradients of three streams.

    Stream 3 has no gradient on the last layer (as a source with its own head).
    """
    keras.utils.set_random_seed(1)
    network = keras.Sequential(
        [
            keras.layers.Dense(5, activation="tanh"),
            keras.layers.Dense(4, activation="tanh"),
            keras.layers.Dense(3),
        ]
    )
    network.build((None, 6))
    variables = network.trainable_variables
    layer_ids = [v // 2 for v in range(len(variables))]  # a kernel and a bias a layer
    rng = np.random.default_rng(0)

    def batch(n=8):
        return rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 3, n).astype("int32")

    def loss_at(params, x, y):
        logits, _ = network.stateless_call(params, [], x)
        return tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        )

    def gradients(x, y):
        params = [v.value for v in variables]
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = loss_at(params, x, y)
        return tape.gradient(loss, params)

    target_x, target_y = batch()
    target_grads = gradients(target_x, target_y)
    stream_grads = [gradients(*batch()) for _ in range(3)]
    stream_grads[2] = stream_grads[2][:4] + [tf.zeros_like(g) for g in stream_grads[2][4:]]
    return (
        lambda params: loss_at(params, target_x, target_y),
        [v.value for v in variables],
        target_grads,
        stream_grads,
        layer_ids,
    )


class LookaheadTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(1e-3, 0.1, 1.0)
    def test_equals_closed_form_at_zero(self, step_size):
        """The exact meta-gradient at w = 0 is <g_T,l, g_s,l>, for any look-ahead step size."""
        target_loss, params, target_grads, stream_grads, layer_ids = _network_and_gradients()
        dots, _, _ = weights.per_variable_products(target_grads, stream_grads)
        closed_form = weights.layer_sums(dots, tf.constant(layer_ids), 3)  # [3 streams, 3 layers]
        u, loss = lookahead.lookahead_alignment(
            target_loss, params, stream_grads, layer_ids, tf.zeros([3, 3]), step_size
        )
        self.assertAllClose(u, closed_form, rtol=1e-4, atol=1e-6)
        self.assertAllClose(loss, target_loss(params))  # theta' = theta at w = 0
        self.assertAllEqual(u[2, 2], 0.0)  # no gradient on that layer: no alignment
        self.assertGreater(float(tf.reduce_max(tf.abs(closed_form))), 1e-3)  # not trivial

    def test_quadratic_from_non_zero_init(self):
        """L(theta) = |theta - c|^2 / 2: u[s, l] = <c - theta'_l, -g_s,l>, theta' the look-ahead."""
        rng = np.random.default_rng(2)
        layer_ids = [0, 0, 1]
        params = [tf.constant(rng.normal(size=n), tf.float32) for n in (3, 1, 2)]
        centre = [tf.constant(rng.normal(size=n), tf.float32) for n in (3, 1, 2)]
        streams = [[tf.constant(rng.normal(size=n), tf.float32) for n in (3, 1, 2)] for _ in "ab"]
        init = tf.constant([[0.5, 2.0], [1.0, 0.0]])
        step_size = 0.3

        def target_loss(theta):
            return 0.5 * tf.add_n([tf.reduce_sum(tf.square(t - c)) for t, c in zip(theta, centre)])

        u, loss = lookahead.lookahead_alignment(
            target_loss, params, streams, layer_ids, init, step_size
        )
        theta_prime = [
            params[v].numpy()
            - step_size * sum(init[s, layer_ids[v]].numpy() * streams[s][v].numpy() for s in (0, 1))
            for v in range(3)
        ]
        expected = np.zeros([2, 2])
        for s in (0, 1):
            for v, layer in enumerate(layer_ids):
                expected[s, layer] += np.dot(theta_prime[v] - centre[v].numpy(), streams[s][v])
        self.assertAllClose(u, expected, rtol=1e-5)
        self.assertAllClose(loss, target_loss([tf.constant(t) for t in theta_prime]))


class AdaptiveLearningRateTest(tf.test.TestCase, parameterized.TestCase):
    def test_batch_importance_by_hand(self):
        target = [tf.constant([1.0, 1.0]), tf.constant([0.0])]
        self.assertAllClose(
            adaptive_lr.batch_importance([tf.constant([1.0, 0.0]), tf.constant([0.0])], target),
            1 / math.sqrt(2),
        )
        self.assertAllClose(
            adaptive_lr.batch_importance([tf.constant([2.0, 2.0]), tf.constant([0.0])], target),
            1.0,
        )
        # Anti-aligned, orthogonal or zero: rho = 0.
        for mixed in ([-1.0, -2.0], [1.0, -1.0], [0.0, 0.0]):
            rho = adaptive_lr.batch_importance([tf.constant(mixed), tf.constant([0.0])], target)
            self.assertAllEqual(rho, 0.0)

    @parameterized.parameters((1.0, 1.0), (1e-15, 1e-15), (1e15, 1e-15), (1e15, 1e15))
    def test_batch_importance_is_scale_free(self, mixed_scale, target_scale):
        target = [tf.constant([target_scale, target_scale]), tf.constant([2.0 * target_scale])]
        mixed = [tf.constant([mixed_scale, 0.0]), tf.constant([mixed_scale])]
        # cos = (1 + 2) / (sqrt(2) * sqrt(6)) = 3 / sqrt(12)
        self.assertAllClose(adaptive_lr.batch_importance(mixed, target), 3 / math.sqrt(12))

    def test_running_mean_is_bias_corrected(self):
        ema, steps, mean = adaptive_lr.update_running_mean(0.0, 0.0, 0.8, 0.99)
        self.assertAllClose([ema, steps, mean], [0.008, 1.0, 0.8])  # the first mean is rho itself
        ema, steps, mean = adaptive_lr.update_running_mean(ema, steps, 0.4, 0.99)
        # ema = 0.99 * 0.008 + 0.01 * 0.4 = 0.01192; mean = ema / (1 - 0.99^2)
        self.assertAllClose([ema, steps, mean], [0.01192, 2.0, 0.01192 / 0.0199])
        self.assertAllClose(
            adaptive_lr.learning_rate_ratio(0.4, mean, 0.5, 2.0), 0.4 / (0.01192 / 0.0199)
        )

    @parameterized.named_parameters(
        ("equal", 0.6, 0.6, 1.0),
        ("between", 0.9, 0.6, 1.5),
        ("clipped_low", 0.1, 0.8, 0.5),
        ("clipped_high", 0.9, 0.3, 2.0),
        ("rho_zero", 0.0, 0.5, 0.5),
        ("mean_zero", 0.7, 0.0, 1.0),
        ("both_zero", 0.0, 0.0, 1.0),
    )
    def test_learning_rate_ratio(self, rho, rho_mean, expected):
        self.assertAllClose(adaptive_lr.learning_rate_ratio(rho, rho_mean, 0.5, 2.0), expected)
