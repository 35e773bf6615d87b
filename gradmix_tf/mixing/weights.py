"""Layer-wise mixing weights (step 4 in docs/algorithm.md): pure tensor functions.

Shapes used throughout: S streams (the K sources, then the pseudo-labelled
stream P when it exists), L layers on the target's path, V trainable variables
on the target's path. `layer_ids[v]` is the layer of variable v.

The closed form (one meta-gradient step from w = 0, as in Ren et al. 2018)::

    u[s, l] = <g_T,l, g_s,l>          (alignment of stream s with the target)
    w~[s, l] = max(u[s, l], 0)
    w[s, l] = w~[s, l] / sum_s' w~[s', l]   (0 where the sum is 0)

Options (the normalisation and the scale are reconstructions of the paper):
- `alignment`: "dot" (the meta-gradient itself) or "cosine" (scale-free).
- `granularity`: "layer" (one weight per stream and layer) or "stream" (one
  global weight per stream, from the alignment summed over layers).
- `normalization`: "per_layer" (over streams, per layer), "all" (over all
  (s, l), rescaled so the mean per-layer sum is 1) or "none" (w~ as is).
- `weight_total`: the per-layer sum after normalisation; 1.0 by default,
  `num_streams` (pass S) makes the mixed gradient as large as joint training's.

None of these functions touch Keras state or `tf.distribute`; they compile
with XLA (`solve_layer_weights_jit`).
"""

from __future__ import annotations

import tensorflow as tf

ALIGNMENTS = ("dot", "cosine")
GRANULARITIES = ("layer", "stream")
NORMALIZATIONS = ("per_layer", "all", "none")


def per_variable_products(target_grads, stream_grads):
    """Per-variable inner products and squared norms.

    Args:
        target_grads: list of V tensors, g_T for each variable.
        stream_grads: list of S lists of V tensors (zeros where a stream has none).

    Returns:
        (dots [S, V], target_sq [V], stream_sq [S, V]), float32.
    """

    def flat(g):
        return tf.reshape(tf.cast(g, tf.float32), [-1])

    target_flat = [flat(g) for g in target_grads]
    dots, sq = [], []
    for grads in stream_grads:
        stream_flat = [flat(g) for g in grads]
        dots.append(tf.stack([tf.reduce_sum(t * s) for t, s in zip(target_flat, stream_flat)]))
        sq.append(tf.stack([tf.reduce_sum(s * s) for s in stream_flat]))
    target_sq = tf.stack([tf.reduce_sum(t * t) for t in target_flat])
    return tf.stack(dots), target_sq, tf.stack(sq)


def layer_sums(per_variable, layer_ids, num_layers: int):
    """Sums a [..., V] tensor over the variables of each layer -> [..., L]."""
    moved = tf.experimental.numpy.moveaxis(per_variable, -1, 0)  # [V, ...]
    summed = tf.math.unsorted_segment_sum(moved, layer_ids, num_layers)  # [L, ...]
    return tf.experimental.numpy.moveaxis(summed, 0, -1)


def alignment_scores(dots, target_sq, stream_sq, alignment: str = "dot"):
    """u[s, l] from layer-summed products: the dot product or the cosine (`alignment`,
    one of `ALIGNMENTS`, checked by `GradMixOptions`)."""
    if alignment == "dot":
        return dots
    if alignment == "cosine":
        # |g_s| |g_T| as a product of roots: the product of squares under- or
        # overflows float32 for small or large gradients, and no epsilon floor
        # (it would shrink the cosine of small gradients). 0 where a norm is 0.
        norms = tf.sqrt(stream_sq) * tf.sqrt(target_sq)[None, :]
        return tf.clip_by_value(tf.math.divide_no_nan(dots, norms), -1.0, 1.0)
    raise AssertionError(alignment)


def normalize_weights(raw, normalization: str = "per_layer", weight_total=1.0):
    """w from w~ = max(u, 0), [S, L] -> [S, L]; zero columns stay zero (`normalization`,
    one of `NORMALIZATIONS`, checked by `GradMixOptions`)."""
    clipped = tf.maximum(raw, 0.0)
    if normalization == "per_layer":
        total = tf.reduce_sum(clipped, axis=0, keepdims=True)
        return weight_total * tf.math.divide_no_nan(clipped, total)
    if normalization == "all":
        num_layers = tf.cast(tf.shape(clipped)[1], clipped.dtype)
        total = tf.reduce_sum(clipped)
        return weight_total * num_layers * tf.math.divide_no_nan(clipped, total)
    if normalization == "none":
        return clipped
    raise AssertionError(normalization)


def solve_layer_weights(
    dots,
    target_sq,
    stream_sq,
    alignment: str = "dot",
    granularity: str = "layer",
    normalization: str = "per_layer",
    weight_total=1.0,
):
    """The closed-form mixing weights from the products summed per layer (`layer_sums`).

    Args:
        dots: [S, L] <g_T,l, g_s,l>.
        target_sq: [L] |g_T,l|^2.
        stream_sq: [S, L] |g_s,l|^2.

    Returns:
        (weights [S, L], alignment [S, L]): the mixing weights and u.
    """
    num_layers = tf.shape(dots)[1]
    if granularity == "stream":
        dots = tf.reduce_sum(dots, axis=1, keepdims=True)  # [S, 1]
        target_sq = tf.reduce_sum(target_sq, keepdims=True)  # [1]
        stream_sq = tf.reduce_sum(stream_sq, axis=1, keepdims=True)  # [S, 1]
    u = alignment_scores(dots, target_sq, stream_sq, alignment)
    weights = normalize_weights(u, normalization, weight_total)
    if granularity == "stream":
        u = tf.tile(u, [1, num_layers])
        weights = tf.tile(weights, [1, num_layers])
    return weights, u


solve_layer_weights_jit = tf.function(
    solve_layer_weights,
    jit_compile=True,
    reduce_retracing=True,
)


def mix_gradients(stream_grads, weights, layer_ids, target_grads, target_weight=1.0):
    """Step 5 (docs/algorithm.md): G_v = sum_s w[s, layer(v)] g_s,v + lambda_T g_T,v.

    Args:
        stream_grads: S lists of V gradients (zeros where a stream has none).
        weights: [S, L] mixing weights.
        layer_ids: python list of V ints, the layer of each variable.
        target_grads: V gradients of the labelled target loss.
        target_weight: lambda_T.

    Returns:
        a list of V mixed gradients.
    """
    mixed = []
    for v, layer in enumerate(layer_ids):
        total = target_weight * target_grads[v]
        for s, grads in enumerate(stream_grads):
            total += tf.cast(weights[s, layer], grads[v].dtype) * grads[v]
        mixed.append(total)
    return mixed


def stacked_factors(weights, target_weight, layer_ids):
    """[V, S + 1] (float32): each variable's factors of its S stream gradients and its
    target gradient in the mixed gradient, w[s, layer(v)] then lambda_T."""
    layer_weights = tf.gather(tf.cast(weights, tf.float32), layer_ids, axis=1)  # [S, V]
    target_row = tf.fill([1, len(layer_ids)], tf.cast(target_weight, tf.float32))
    return tf.transpose(tf.concat([layer_weights, target_row], 0))


def mix_stacked_gradients(flat_grads, shapes, weights, target_weight=1.0, *, layer_ids):
    """Step 5 from stacked gradients: G_v = sum_s w[s, layer(v)] g_s,v + lambda_T g_T,v.

    Args:
        flat_grads: V tensors [S + 1, n_v]: each variable's S stream gradients, then its
            target gradient, flattened.
        shapes: the V variables' shapes.
        weights: [S, L] mixing weights.
        target_weight: lambda_T.
        layer_ids: python list of V ints, the layer of each variable.

    Returns:
        a list of V mixed gradients.
    """
    factors = stacked_factors(weights, target_weight, layer_ids)
    mixed = []
    for factor, flat, shape in zip(tf.unstack(factors[:, None, :]), flat_grads, shapes):
        mixed.append(tf.reshape(tf.matmul(tf.cast(factor, flat.dtype), flat), shape))
    return mixed


def persistent_step(weights, alignment, step_size: float, weight_max: float):
    """Weights that persist across steps: w <- clip(w + step_size * u, 0, weight_max).

    One step of (projected) gradient ascent on the alignment u [S, L] of each
    stream with the target: a stream whose gradient keeps agreeing with the
    target's gains weight, one that keeps disagreeing loses it, and no step
    renormalises, so a layer where every source disagrees takes less from all.
    """
    return tf.clip_by_value(weights + step_size * alignment, 0.0, weight_max)
