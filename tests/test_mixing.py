"""Tests of the pure mixing functions (`gradmix_tf.mixing`): steps 4-6 of docs/algorithm.md by hand."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

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
    ids, num_layers = tf.constant(layer_ids, tf.int32), max(layer_ids) + 1
    layer_products = (weights.layer_sums(p, ids, num_layers) for p in (dots, target_sq, stream_sq))
    return weights.solve_layer_weights(*layer_products, **options)


# ---------------------------------------------------------------- closed form
def test_per_variable_products_by_hand():
    dots, target_sq, stream_sq = weights.per_variable_products(
        as_tensors(TARGET), [as_tensors(STREAM_A), as_tensors(STREAM_B)]
    )
    np.testing.assert_allclose(dots, [[1.0, 1.0, 2.0], [4.0, 1.0, -2.0]], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(target_sq, [5.0, 1.0, 4.0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stream_sq, [[1.0, 1.0, 2.0], [4.0, 1.0, 2.0]], rtol=1e-6, atol=1e-6)


def test_layer_sums():
    per_variable = tf.constant([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    summed = weights.layer_sums(per_variable, tf.constant([0, 1, 0, 2]), 3)
    np.testing.assert_allclose(summed, [[4.0, 2.0, 4.0], [12.0, 6.0, 8.0]], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        weights.layer_sums(per_variable[0], [0, 1, 0, 2], 3), [4, 2, 4], rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize(
    "granularity, normalization, weight_total, expected",
    [
        # layer 0: w~ = (2, 5) / 7; layer 1: w~ = (2, 0) / 2.
        pytest.param("layer", "per_layer", 1.0, [[2 / 7, 1.0], [5 / 7, 0.0]], id="per_layer"),
        pytest.param(
            "layer", "per_layer", 2.0, [[4 / 7, 2.0], [10 / 7, 0.0]], id="per_layer_total_2"
        ),
        # all (s, l): w~ / 9, times L = 2 so the mean per-layer sum is 1.
        pytest.param("layer", "all", 1.0, [[4 / 9, 4 / 9], [10 / 9, 0.0]], id="all"),
        pytest.param("layer", "all", 3.0, [[12 / 9, 12 / 9], [30 / 9, 0.0]], id="all_total_3"),
        # none: w~ = max(u, 0) as is, whatever the total.
        pytest.param("layer", "none", 5.0, [[2.0, 2.0], [5.0, 0.0]], id="none"),
        # stream: u summed over layers, A: 4, B: 3 -> (4, 3) / 7 in every layer.
        pytest.param("stream", "per_layer", 1.0, [[4 / 7, 4 / 7], [3 / 7, 3 / 7]], id="stream"),
        pytest.param("stream", "all", 1.0, [[4 / 7, 4 / 7], [3 / 7, 3 / 7]], id="stream_all"),
        pytest.param("stream", "none", 1.0, [[4.0, 4.0], [3.0, 3.0]], id="stream_none"),
    ],
)
def test_weights_by_hand(granularity, normalization, weight_total, expected):
    mixing_weights, u = solve(
        granularity=granularity, normalization=normalization, weight_total=weight_total
    )
    np.testing.assert_allclose(mixing_weights, expected, rtol=1e-6, atol=1e-6)
    hand_u = np.array(HAND_U)
    if granularity == "stream":
        hand_u = np.tile(hand_u.sum(axis=1, keepdims=True), [1, 2])
    np.testing.assert_allclose(u, hand_u, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "normalization, weight_total",
    [
        pytest.param("per_layer", 1.0, id="per_layer"),
        pytest.param("per_layer", 2, id="per_layer_num_streams"),
        pytest.param("all", 1.0, id="all"),
        pytest.param("all", 2, id="all_num_streams"),
    ],
)
def test_weight_total_is_the_per_layer_sum(normalization, weight_total):
    """per_layer: every layer with a positive u sums to the total; all: their mean does."""
    mixing_weights, _ = solve(normalization=normalization, weight_total=weight_total)
    layer_totals = tf.reduce_sum(mixing_weights, axis=0)
    if normalization == "per_layer":
        np.testing.assert_allclose(layer_totals, [weight_total] * 2, rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_allclose(tf.reduce_mean(layer_totals), weight_total, rtol=1e-6, atol=1e-6)


def test_negative_alignment_gets_zero_weight():
    anti_target = [[-x for x in g] for g in TARGET]
    mixing_weights, u = solve(streams=(TARGET, anti_target))
    np.testing.assert_allclose(u, [[6.0, 4.0], [-6.0, -4.0]], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mixing_weights, [[1.0, 1.0], [0.0, 0.0]], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("normalization", ["per_layer", "all", "none"])
@pytest.mark.parametrize("granularity", ["layer", "stream"])
@pytest.mark.parametrize("alignment", ["dot", "cosine"])
def test_zero_rows_and_columns_give_zero_not_nan(alignment, granularity, normalization):
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
        np.testing.assert_array_equal(
            np.isfinite(mixing_weights), np.ones([2, 2], bool), err_msg=name
        )
        np.testing.assert_array_equal(np.isfinite(u), np.ones([2, 2], bool), err_msg=name)
        if name in ("all zero", "zero target"):
            np.testing.assert_array_equal(mixing_weights, np.zeros([2, 2]), err_msg=name)
        if name == "zero stream":
            np.testing.assert_array_equal(mixing_weights[0], [0.0, 0.0], err_msg=name)
        if name == "zero layer" and granularity == "layer":
            np.testing.assert_array_equal(mixing_weights[:, 1], [0.0, 0.0], err_msg=name)


def test_cosine_by_hand():
    mixing_weights, u = solve(alignment="cosine")
    np.testing.assert_allclose(u, HAND_COSINE, rtol=1e-6, atol=1e-6)
    cos = np.array(HAND_COSINE)
    expected_layer_0 = cos[:, 0] / cos[:, 0].sum()
    np.testing.assert_allclose(
        mixing_weights, np.stack([expected_layer_0, [1.0, 0.0]], axis=1), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize(
    "target_scale, stream_scale", [(1e-8, 1.0), (1.0, 1e-8), (1e-8, 1e-8), (1e3, 1e-3), (1e9, 1e9)]
)
def test_cosine_is_scale_free(target_scale, stream_scale):
    def scaled(grads, scale):
        return [[scale * x for x in g] for g in grads]

    streams = (scaled(STREAM_A, stream_scale), scaled(STREAM_B, 1.0))
    mixing_weights, u = solve(
        target=scaled(TARGET, target_scale), streams=streams, alignment="cosine"
    )
    reference_weights, _ = solve(alignment="cosine")
    np.testing.assert_allclose(u, HAND_COSINE, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mixing_weights, reference_weights, rtol=1e-5, atol=1e-6)


def test_jit_solver_matches_eager():
    dots, target_sq, stream_sq = weights.per_variable_products(
        as_tensors(TARGET), [as_tensors(STREAM_A), as_tensors(STREAM_B)]
    )
    layer_ids = tf.constant(LAYER_IDS, tf.int32)
    products = [weights.layer_sums(p, layer_ids, 2) for p in (dots, target_sq, stream_sq)]
    for alignment in weights.ALIGNMENTS:
        eager = weights.solve_layer_weights(*products, alignment=alignment)
        jit = weights.solve_layer_weights_jit(*products, alignment=alignment)
        np.testing.assert_allclose(eager, jit, rtol=1e-6, atol=1e-6)


def test_mix_gradients_by_hand():
    mixing_weights, _ = solve()  # [[2/7, 1], [5/7, 0]]
    mixed = weights.mix_gradients(
        [as_tensors(STREAM_A), as_tensors(STREAM_B)],
        mixing_weights,
        LAYER_IDS,
        as_tensors(TARGET),
        target_weight=1.0,
    )
    # v0 = 2/7 [1, 0] + 5/7 [0, 2] + [1, 2]; v1 = 2/7 + 5/7 + 1; v2 = [1, 1] + [2, 0].
    np.testing.assert_allclose(mixed[0], [9 / 7, 24 / 7], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mixed[1], [2.0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mixed[2], [3.0, 1.0], rtol=1e-6, atol=1e-6)
    without_target = weights.mix_gradients(
        [as_tensors(STREAM_A)], tf.ones([1, 2]), LAYER_IDS, as_tensors(TARGET), 0.0
    )
    for got, expected in zip(without_target, STREAM_A):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


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


# ------------------------------------------------------------------ lookahead
@pytest.mark.parametrize("step_size", [1e-3, 0.1, 1.0])
def test_equals_closed_form_at_zero(step_size):
    """The exact meta-gradient at w = 0 is <g_T,l, g_s,l>, for any look-ahead step size."""
    target_loss, params, target_grads, stream_grads, layer_ids = _network_and_gradients()
    dots, _, _ = weights.per_variable_products(target_grads, stream_grads)
    closed_form = weights.layer_sums(dots, tf.constant(layer_ids), 3)  # [3 streams, 3 layers]
    u, loss = lookahead.lookahead_alignment(
        target_loss, params, stream_grads, layer_ids, tf.zeros([3, 3]), step_size
    )
    np.testing.assert_allclose(u, closed_form, rtol=1e-4, atol=1e-6)
    # theta' = theta at w = 0
    np.testing.assert_allclose(loss, target_loss(params), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(u[2, 2], 0.0)  # no gradient on that layer: no alignment
    assert float(tf.reduce_max(tf.abs(closed_form))) > 1e-3  # not trivial


def test_quadratic_from_non_zero_init():
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
    np.testing.assert_allclose(u, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        loss, target_loss([tf.constant(t) for t in theta_prime]), rtol=1e-6, atol=1e-6
    )


# ----------------------------------------------------- adaptive learning rate
def batch_importance(mixed, target):
    """rho of a mixed gradient and the target's, through `batch_importance_from_products`."""
    dot = tf.add_n([tf.reduce_sum(m * t) for m, t in zip(mixed, target)])
    return adaptive_lr.batch_importance_from_products(
        mixed, dot, tf.add_n([tf.reduce_sum(t * t) for t in target])
    )


def test_batch_importance_by_hand():
    target = [tf.constant([1.0, 1.0]), tf.constant([0.0])]
    np.testing.assert_allclose(
        batch_importance([tf.constant([1.0, 0.0]), tf.constant([0.0])], target),
        1 / math.sqrt(2),
        rtol=1e-6,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        batch_importance([tf.constant([2.0, 2.0]), tf.constant([0.0])], target),
        1.0,
        rtol=1e-6,
        atol=1e-6,
    )
    # Anti-aligned, orthogonal or zero: rho = 0.
    for mixed in ([-1.0, -2.0], [1.0, -1.0], [0.0, 0.0]):
        rho = batch_importance([tf.constant(mixed), tf.constant([0.0])], target)
        np.testing.assert_array_equal(rho, 0.0)


@pytest.mark.parametrize(
    "mixed_scale, target_scale", [(1.0, 1.0), (1e-15, 1e-15), (1e15, 1e-15), (1e15, 1e15)]
)
def test_batch_importance_is_scale_free(mixed_scale, target_scale):
    target = [tf.constant([target_scale, target_scale]), tf.constant([2.0 * target_scale])]
    mixed = [tf.constant([mixed_scale, 0.0]), tf.constant([mixed_scale])]
    # cos = (1 + 2) / (sqrt(2) * sqrt(6)) = 3 / sqrt(12)
    np.testing.assert_allclose(
        batch_importance(mixed, target), 3 / math.sqrt(12), rtol=1e-6, atol=1e-6
    )


def test_running_mean_is_bias_corrected():
    ema, steps, mean = adaptive_lr.update_running_mean(0.0, 0.0, 0.8, 0.99)
    # The first mean is rho itself.
    np.testing.assert_allclose([ema, steps, mean], [0.008, 1.0, 0.8], rtol=1e-6, atol=1e-6)
    ema, steps, mean = adaptive_lr.update_running_mean(ema, steps, 0.4, 0.99)
    # ema = 0.99 * 0.008 + 0.01 * 0.4 = 0.01192; mean = ema / (1 - 0.99^2)
    np.testing.assert_allclose(
        [ema, steps, mean], [0.01192, 2.0, 0.01192 / 0.0199], rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(
        adaptive_lr.learning_rate_ratio(0.4, mean, 0.5, 2.0),
        0.4 / (0.01192 / 0.0199),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "rho, rho_mean, expected",
    [
        pytest.param(0.6, 0.6, 1.0, id="equal"),
        pytest.param(0.9, 0.6, 1.5, id="between"),
        pytest.param(0.1, 0.8, 0.5, id="clipped_low"),
        pytest.param(0.9, 0.3, 2.0, id="clipped_high"),
        pytest.param(0.0, 0.5, 0.5, id="rho_zero"),
        pytest.param(0.7, 0.0, 1.0, id="mean_zero"),
        pytest.param(0.0, 0.0, 1.0, id="both_zero"),
    ],
)
def test_learning_rate_ratio(rho, rho_mean, expected):
    np.testing.assert_allclose(
        adaptive_lr.learning_rate_ratio(rho, rho_mean, 0.5, 2.0), expected, rtol=1e-6, atol=1e-6
    )
