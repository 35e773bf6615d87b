"""The exact look-ahead meta-gradient of the mixing weights (step 4 in docs/algorithm.md, an option).

For mixing weights w [S, L] the look-ahead parameters are

    theta'_v(w) = theta_v - alpha * sum_s w[s, layer(v)] * g_s,v

and the meta-objective is the labelled target loss L_T(theta'(w)). This module
evaluates it for real (the caller's `target_loss_fn` runs the network with
`stateless_call` on `theta'`) and differentiates it with respect to w:

    u[s, l] = -(1 / alpha) * dL_T(theta'(w)) / dw[s, l]

At w = 0 this equals the closed form <g_T,l, g_s,l> exactly; from a non-zero
w (`lookahead_init`) it measures alignment at the look-ahead point instead.
The stream gradients g_s are held constant (first-order in w, as in Ren et al.).
"""

from __future__ import annotations

import tensorflow as tf


def lookahead_alignment(target_loss_fn, params, stream_grads, layer_ids, init_weights, step_size):
    """The meta-gradient alignment u [S, L] through a real look-ahead step.

    Args:
        target_loss_fn: maps a list of V parameter tensors to the scalar
            labelled-target loss (differentiable in its argument).
        params: list of V current parameter tensors (the target's path).
        stream_grads: S lists of V gradients (zeros where a stream has none).
        layer_ids: python list of V ints, the layer of each parameter.
        init_weights: [S, L] the mixing weights the look-ahead starts from.
        step_size: alpha, the step size of the look-ahead.

    Returns:
        (u [S, L], look-ahead target loss scalar).
    """
    weights = tf.convert_to_tensor(init_weights, tf.float32)
    step_size = tf.cast(step_size, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(weights)
        lookahead = []
        for v, (param, layer) in enumerate(zip(params, layer_ids)):
            step = tf.add_n(
                [
                    weights[s, layer] * tf.cast(grads[v], tf.float32)
                    for s, grads in enumerate(stream_grads)
                ]
            )
            lookahead.append(tf.cast(param, tf.float32) - step_size * step)
        loss = target_loss_fn(lookahead)
    meta_gradient = tape.gradient(loss, weights)  # [S, L]
    return -meta_gradient / step_size, loss
