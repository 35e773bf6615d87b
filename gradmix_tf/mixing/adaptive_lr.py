"""The adaptive learning rate per mini-batch (step 6 in docs/algorithm.md): pure tensor functions.

Reconstruction (the paper's exact formula is not available)::

    rho_t = max(cos(G, g_T), 0)                 over the target's path
    rho_bar_t = bias-corrected EMA of rho (decay 0.99), including rho_t
    r_t = clip(rho_t / rho_bar_t, r_min, r_max)  (1 while rho_bar_t is 0)

The step size at t is schedule(t) * r_t; `training.learning_rate` applies it
to any Keras optimizer.
"""

from __future__ import annotations

import tensorflow as tf


def batch_importance_from_products(mixed_grads, mixed_target, target_sq):
    """rho = max(cos(G, g_T), 0) from <G, g_T> and |g_T|^2 taken already
    (`mixing.stream_gradients`): one pass over G for |G|^2."""
    mixed_sq = tf.add_n([tf.reduce_sum(tf.square(tf.cast(m, tf.float32))) for m in mixed_grads])
    return clipped_cosine(mixed_target, mixed_sq, target_sq)


def clipped_cosine(dot, mixed_sq, target_sq):
    """max(dot / (|G| |g_T|), 0), 0 where a norm is 0."""
    # A product of roots, not the root of a product (which leaves float32's range).
    cosine = tf.math.divide_no_nan(dot, tf.sqrt(mixed_sq) * tf.sqrt(target_sq))
    return tf.clip_by_value(cosine, 0.0, 1.0)


def update_running_mean(ema, steps, rho, decay):
    """One EMA step; returns (new_ema, new_steps, bias-corrected mean)."""
    new_ema = decay * ema + (1.0 - decay) * rho
    new_steps = steps + 1.0
    mean = new_ema / (1.0 - tf.pow(decay, new_steps))
    return new_ema, new_steps, mean


def learning_rate_ratio(rho, rho_mean, r_min, r_max):
    """r = clip(rho / rho_mean, r_min, r_max), and 1 where rho_mean is 0."""
    ratio = tf.clip_by_value(tf.math.divide_no_nan(rho, rho_mean), r_min, r_max)
    return tf.where(rho_mean > 0.0, ratio, tf.ones_like(ratio))
