"""Gradient rules of the baselines that share GradMix's trainer: pure tensor functions.

`GradMixModel(rule=...)` selects them (docs/algorithm.md, "Baselines"):

- "pretrain_finetune": source pre-training, then target fine-tuning.
  `pretrain_finetune_weights` gives the stream weights (1, then 0) and the
  target weight (0, then lambda_T) of a step.
- "example_reweighting": learning to reweight examples (Ren et al., ICML
  2018) on the pooled source batches. `example_weights_from_alignment`
  turns each example's alignment with the target gradient into its weight.
- "pcgrad": gradient surgery (Yu et al., NeurIPS 2020) over the streams and
  the target. `pcgrad_coefficients` runs it on the Gram matrix of the
  gradients, so it costs O((S+1)^2) dot products and gives one weight a
  stream: the surgery of global gradients applied to local ones.
"""

from __future__ import annotations

import tensorflow as tf


def pretrain_finetune_weights(step, pretrain_steps: int, num_streams: int, num_layers: int):
    """Stream weights [S, L] and the target's weight factor for a step.

    Steps < `pretrain_steps` train on the sources only (weights 1, target 0);
    later steps fine-tune on the labelled target only (weights 0, target 1).
    """
    pretraining = tf.cast(tf.cast(step, tf.int64) < pretrain_steps, tf.float32)
    stream_weights = tf.fill([num_streams, num_layers], pretraining)
    return stream_weights, 1.0 - pretraining


def example_weights_from_alignment(alignments, global_total=None):
    """Ren et al.'s weights: w_i = max(a_i, 0) / sum_j max(a_j, 0) over the pooled batch.

    Args:
        alignments: a list (one per stream) of [B_s] tensors, a_i = <g_T, grad l_i>,
            the negative meta-gradient of the target loss w.r.t. example i's weight.
        global_total: the sum of max(a, 0) over every replica's pooled batch;
            None: over these alignments only.

    Returns:
        the list of [B_s] weights; all zeros if no example aligns (sum 0).
    """
    positive = [tf.nn.relu(a) for a in alignments]
    if global_total is None:
        global_total = tf.add_n([tf.reduce_sum(p) for p in positive])
    return [tf.math.divide_no_nan(p, global_total) for p in positive]


def gram_matrix(grads):
    """[N, N] inner products of N gradients (each a list of V tensors)."""
    flat = tf.stack(
        [tf.concat([tf.reshape(tf.cast(g, tf.float32), [-1]) for g in gs], 0) for gs in grads]
    )
    return tf.matmul(flat, flat, transpose_b=True)


def pcgrad_coefficients(gram):
    """PCGrad in coefficient space: the weight of each gradient in the sum.

    Task i's gradient is projected, against every other task j in index
    order, onto the normal plane of g_j when they conflict (<g_i', g_j> < 0):
    g_i' <- g_i' - <g_i', g_j> / |g_j|^2 g_j. The result is sum_i g_i' =
    sum_k c_k g_k; only the Gram matrix is needed. (The original shuffles the
    order of j per step; a fixed order keeps runs deterministic.)

    Args:
        gram: [N, N] Gram matrix of the N task gradients.

    Returns:
        c: [N] coefficients.
    """
    gram = tf.convert_to_tensor(gram, tf.float32)
    n = gram.shape[0]
    eye = tf.eye(n)
    rows = []
    for i in range(n):
        a = eye[i]  # g_i' = sum_k a_k g_k
        for j in range(n):
            if j == i:
                continue
            dot = tf.tensordot(a, gram[:, j], 1)
            scale = tf.math.divide_no_nan(tf.minimum(dot, 0.0), gram[j, j])
            a = a - scale * eye[j]
        rows.append(a)
    return tf.reduce_sum(tf.stack(rows), axis=0)
