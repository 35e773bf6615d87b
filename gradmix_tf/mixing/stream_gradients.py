"""The step's stream and target gradients, with their products taken once (steps 4-6).

Three parts of a step read inner products of the same gradients: the mixing
rule (u[s, l] = <g_T,l, g_s,l> and the squared norms, step 4), the
non-finite check (each stream's squared norm) and the adaptive learning rate
(rho = cos(G, g_T), step 6). `StreamGradients` holds the S stream gradients
and g_T (global: all-reduced) and takes their per-variable products once,
the first time one of them asks; the others read them:

    dots[s, v] = <g_T,v, g_s,v>     target_sq[v] = |g_T,v|^2     stream_sq[s, v] = |g_s,v|^2

and rho's <G, g_T> = sum_l (sum_s w[s, l] dots_l[s, l] + lambda_T target_sq_l) is
made from them, so only |G|^2 takes another pass over the gradients
(`batch_importance`; from stacked gradients, whose products are every pair's, |G|^2
is made from the products too).

Every pass over the gradients reads (S + 1) x the target path's size from
memory (ResNet50: about 90 MiB a gradient copy); it grows with the number of
weights, as the optimizer's own work does (docs/algorithm.md, "Cost and
memory"). The per-variable products are one multiply and one sum a pair: a
Gram matrix of the stacked gradients (one [S + 1, n] x [n, S + 1] matmul a
variable) was slower on a CPU (docs/RESULTS.md, "Tried and not kept").
"""

from __future__ import annotations

import functools

import tensorflow as tf

from gradmix_tf.mixing import adaptive_lr, weights


class StreamGradients:
    """The S streams' and the target's gradients on the target's path, and their products.

    Args:
        streams: S lists of V gradients (global; zeros where a stream has none).
        target: V gradients of the labelled target loss (global).
        layer_ids: python list of V ints, the mixing layer (group) of each variable.
        num_layers: L.
    """

    def __init__(self, streams, target, layer_ids, num_layers: int):
        self.streams = list(streams)
        self.target = list(target)
        self.layer_ids = list(layer_ids)
        self.num_layers = int(num_layers)

    @property
    def num_streams(self) -> int:
        """S."""
        return len(self.streams)

    @functools.cached_property
    def variable_products(self):
        """(dots [S, V], target_sq [V], stream_sq [S, V]), taken once."""
        if not self.streams:
            target_sq = tf.stack([tf.reduce_sum(tf.square(t)) for t in self.target])
            empty = tf.zeros([0, len(self.target)])
            return empty, target_sq, empty
        return weights.per_variable_products(self.target, self.streams)

    def layer_products(self):
        """(dots [S, L], target_sq [L], stream_sq [S, L]): the products summed per layer,
        taken once."""
        return self._layer_products

    @functools.cached_property
    def _layer_products(self):
        ids = tf.constant(self.layer_ids, tf.int32)
        return tuple(weights.layer_sums(p, ids, self.num_layers) for p in self.variable_products)

    def squared_norms(self):
        """[S + 1] |g_s|^2 of each stream over the target's path, then |g_T|^2."""
        _, target_sq, stream_sq = self.variable_products
        return tf.concat([tf.reduce_sum(stream_sq, axis=1), [tf.reduce_sum(target_sq)]], 0)

    def mixed_target_product(self, mixing_weights, target_weight):
        """(<G, g_T>, |g_T|^2) for G = sum_s w[s, l] g_s + lambda_T g_T, from the products.

        Args:
            mixing_weights: [S, L].
            target_weight: lambda_T.
        """
        dots, target_sq, _ = self.layer_products()
        target_total = tf.reduce_sum(target_sq)
        stream_part = tf.reduce_sum(tf.cast(mixing_weights, tf.float32) * dots)
        return stream_part + tf.cast(target_weight, tf.float32) * target_total, target_total

    def batch_importance(self, global_mixed, mixing_weights, target_weight):
        """rho = max(cos(G, g_T), 0) (step 6): <G, g_T> from the products, |G|^2 from G.

        Args:
            global_mixed: a function giving the global (all-reduced) mixed gradient G [V],
                called only where |G|^2 is taken from G.
            mixing_weights: [S, L].
            target_weight: lambda_T.
        """
        return adaptive_lr.batch_importance_from_products(
            global_mixed(), *self.mixed_target_product(mixing_weights, target_weight)
        )


class StreamProducts(StreamGradients):
    """The products taken already, without the gradients (`gradient_memory="recompute"`):
    `streams` and `target` are None.

    Args:
        products: (dots [S, V], target_sq [V], stream_sq [S, V]), global.
        layer_ids: python list of V ints, the mixing layer (group) of each variable.
        num_layers: L.
    """

    def __init__(self, products, layer_ids, num_layers: int):
        super().__init__([], [], layer_ids, num_layers)
        self.streams = self.target = None
        self.variable_products = tuple(products)  # (the cached property, given)

    @property
    def num_streams(self) -> int:
        return int(self.variable_products[0].shape[0])


class StackedStreamGradients(StreamGradients):
    """`StreamGradients` from each variable's gradients stacked and flattened: [S + 1, n],
    the S streams' then the target's (`gradient_memory="one_pass"`); the products take one
    matrix product a variable for all streams.

    Args:
        flat: V tensors [S + 1, n_v] (global).
        shapes: the V variables' shapes.
        layer_ids: python list of V ints, the mixing layer (group) of each variable.
        num_layers: L.
    """

    def __init__(self, flat, shapes, layer_ids, num_layers: int):
        self.flat = list(flat)
        self.shapes = list(shapes)
        self.layer_ids = list(layer_ids)
        self.num_layers = int(num_layers)

    def _row(self, row: int) -> list:
        return [tf.reshape(flat[row], shape) for flat, shape in zip(self.flat, self.shapes)]

    @functools.cached_property
    def streams(self):
        """S lists of V gradients (for the rules that read the gradients themselves)."""
        return [self._row(s) for s in range(self.num_streams)]

    @functools.cached_property
    def target(self):
        return self._row(-1)

    @property
    def num_streams(self) -> int:
        return int(self.flat[0].shape[0]) - 1

    @functools.cached_property
    def grams(self):
        """[V, S + 1, S + 1]: each variable's Gram matrix of its S + 1 gradients, one matmul
        (a matrix-vector product and a sum of squares a variable took about five times the
        graph ops to trace)."""
        grams = [tf.matmul(flat, flat, transpose_b=True) for flat in self.flat]
        return tf.cast(tf.stack(grams), tf.float32)

    @functools.cached_property
    def variable_products(self):
        """(dots [S, V], target_sq [V], stream_sq [S, V]), from the Gram matrices."""
        squares = tf.transpose(tf.linalg.diag_part(self.grams))  # [S + 1, V]
        dots = tf.transpose(self.grams[:, :-1, -1])  # [S, V]
        return dots, squares[-1], squares[:-1]

    def batch_importance(self, global_mixed, mixing_weights, target_weight):
        """rho = max(cos(G, g_T), 0) (step 6), all from the Gram matrices: |G_v|^2 =
        f_v' Gram_v f_v for G_v = f_v' [g_1,v; ...; g_S,v; g_T,v] (f_v: the layer's
        weights, then lambda_T), so no pass over G (`global_mixed` is not called). It
        rounds otherwise than a sum over G's squares, and where G nearly cancels (|G|^2
        far below the terms' squares) it is less precise; it is at least 0."""
        del global_mixed
        factors = weights.stacked_factors(mixing_weights, target_weight, self.layer_ids)
        mixed_sq = tf.maximum(tf.einsum("vs,vst,vt->", factors, self.grams, factors), 0.0)
        dot, target_sq = self.mixed_target_product(mixing_weights, target_weight)
        return adaptive_lr.clipped_cosine(dot, mixed_sq, target_sq)
