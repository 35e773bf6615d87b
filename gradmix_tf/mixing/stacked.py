"""The stream gradients stacked per variable: steps 4-6 in a few ops a variable.

Step 2 gives S stream gradients and step 3 the target gradient g_T, each a
list of V tensors on the target's path. Instead of one small op per stream
and variable for each product and for the mix (O(S x V) ops a step, most of
GradMix's extra cost over joint training on a network of a few hundred
variables), each variable's S + 1 gradients are stacked once::

    A_v = [g_1,v; ...; g_S,v; g_T,v]          [S + 1, n_v]   (row S: the target)
    Gram_v = A_v A_v^T                         [S + 1, S + 1] (one matmul)
    Gram_l = sum of Gram_v over the variables v of layer (group) l

`Gram_l` holds every product the rules and the adaptive learning rate read:
<g_T,l, g_s,l> = Gram_l[S, s], |g_T,l|^2 = Gram_l[S, S], |g_s,l|^2 =
Gram_l[s, s], and the streams' products with each other (PCGrad, |G|^2). The
mixed gradient of step 5 is one [1, S + 1] x [S + 1, n_v] matmul a variable,
G_v = c_l(v)^T A_v with c_l = (w[:, l], lambda_T); and rho (step 6) comes from
the Gram matrices without another pass over G::

    <G, g_T> = sum_l c_l^T Gram_l e_S        |G|^2 = sum_l c_l^T Gram_l c_l

In exact arithmetic these are the per-variable sums of `mixing.weights`
(`per_variable_products`, `mix_gradients`) and `adaptive_lr.batch_importance`;
in float32 they differ by the order of the sums (about 1e-7 relative).

Pure tensor functions, no Keras state and no `tf.distribute`: the model
all-reduces the stacks once (one collective a variable instead of S + 1).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf


def stack_gradients(stream_grads, target_grads) -> list:
    """V tensors [S + 1, n_v]: each variable's S stream gradients, then g_T (float32).

    Args:
        stream_grads: S lists of V gradients (zeros where a stream has none).
        target_grads: V gradients of the labelled target loss.
    """
    stacks = []
    for v, target in enumerate(target_grads):
        rows = [grads[v] for grads in stream_grads] + [target]
        stacked = tf.stack([tf.cast(g, tf.float32) for g in rows])
        stacks.append(tf.reshape(stacked, [len(rows), -1]))
    return stacks


def layer_gram(stacks, layer_ids, num_layers: int):
    """[L, S + 1, S + 1]: the Gram matrix of the S + 1 gradients on each layer.

    Args:
        stacks: V tensors [S + 1, n_v] (`stack_gradients`).
        layer_ids: python list of V ints, the layer (group) of each variable.
        num_layers: L.
    """
    grams = tf.stack([tf.matmul(a, a, transpose_b=True) for a in stacks])  # [V, S+1, S+1]
    return tf.math.unsorted_segment_sum(grams, tf.constant(layer_ids, tf.int32), num_layers)


def layer_products(gram):
    """(dots [S, L], target_sq [L], stream_sq [S, L]) from the layers' Gram matrices.

    dots[s, l] = <g_T,l, g_s,l>, target_sq[l] = |g_T,l|^2, stream_sq[s, l] =
    |g_s,l|^2: what `mixing.weights.solve_mixing_weights` takes, per layer.
    """
    diagonal = tf.linalg.diag_part(gram)  # [L, S+1]
    return (
        tf.transpose(gram[:, -1, :-1]),
        diagonal[:, -1],
        tf.transpose(diagonal[:, :-1]),
    )


def mixing_coefficients(weights, target_weight):
    """c [S + 1, L]: the mixing weights w [S, L], then lambda_T in every layer."""
    weights = tf.convert_to_tensor(weights, tf.float32)
    target_row = tf.fill([1, tf.shape(weights)[1]], tf.cast(target_weight, tf.float32))
    return tf.concat([weights, target_row], axis=0)


def mix_stacked(stacks, coefficients, layer_ids, shapes) -> list:
    """Step 5: G_v = sum_s w[s, l(v)] g_s,v + lambda_T g_T,v = c_l(v)^T A_v, shaped as v.

    Args:
        stacks: V tensors [S + 1, n_v] (`stack_gradients`).
        coefficients: [S + 1, L] (`mixing_coefficients`).
        layer_ids: python list of V ints, the layer (group) of each variable.
        shapes: the V variables' shapes.
    """
    columns = tf.transpose(tf.gather(coefficients, layer_ids, axis=1))  # [V, S+1]
    rows = tf.split(columns, len(stacks), axis=0)  # V x [1, S+1]
    return [tf.reshape(tf.matmul(row, a), shape) for row, a, shape in zip(rows, stacks, shapes)]


def mixed_alignment(gram, coefficients):
    """(<G, g_T>, |G|^2, |g_T|^2) over the target's path, from the Gram matrices.

    Args:
        gram: [L, S + 1, S + 1] (`layer_gram`).
        coefficients: [S + 1, L] (`mixing_coefficients`).
    """
    c = tf.transpose(coefficients)[:, :, None]  # [L, S+1, 1]
    gram_c = tf.matmul(gram, c)  # [L, S+1, 1]
    mixed_target = tf.reduce_sum(gram_c[:, -1, 0])
    mixed_sq = tf.reduce_sum(c * gram_c)
    target_sq = tf.reduce_sum(gram[:, -1, -1])
    return mixed_target, mixed_sq, target_sq


def unstack_gradients(stacks, shapes):
    """(S lists of V stream gradients, V target gradients) from the stacks."""
    rows = [tf.unstack(a) for a in stacks]  # V x (S+1) x [n_v]
    num_streams = len(rows[0]) - 1 if rows else 0
    streams = [
        [tf.reshape(r[s], shape) for r, shape in zip(rows, shapes)] for s in range(num_streams)
    ]
    return streams, [tf.reshape(r[-1], shape) for r, shape in zip(rows, shapes)]


@dataclasses.dataclass(frozen=True)
class StackedGradients:
    """The step's global stream and target gradients on the target's path, stacked.

    What a mixing rule reads (`gradmix_tf.rules`): the layers' Gram matrices
    for products, or the gradients themselves (`stream_gradients`, made only
    when a rule asks).

    Attributes:
        stacks: V tensors [S + 1, n_v] (row s: stream s; row S: the target).
        gram: [L, S + 1, S + 1] the Gram matrix of each layer (group).
        shapes: the V variables' shapes.
    """

    stacks: list
    gram: tf.Tensor
    shapes: tuple

    @property
    def num_streams(self) -> int:
        """S."""
        return int(self.gram.shape[1]) - 1

    def layer_products(self):
        """(dots [S, L], target_sq [L], stream_sq [S, L]) (`layer_products`)."""
        return layer_products(self.gram)

    def path_gram(self):
        """[S + 1, S + 1] the Gram matrix over the whole target's path."""
        return tf.reduce_sum(self.gram, axis=0)

    def stream_gradients(self):
        """(S lists of V gradients, V target gradients), shaped as the variables."""
        return unstack_gradients(self.stacks, self.shapes)
