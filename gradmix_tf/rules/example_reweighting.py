"""Learning to reweight examples (Ren et al., ICML 2018) on the pooled streams."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from gradmix_tf import distribute
from gradmix_tf.mixing import baselines
from gradmix_tf.rules.base import Mix, MixingRule, register_rule


@register_rule("example_reweighting")
class ExampleReweightingRule(MixingRule):
    """Per-example weights from each example's alignment with the target gradient.

    a_i = <g_T, grad l_i> over the target's path: the negative meta-gradient
    of the target loss after one step on sum_i eps_i l_i, w.r.t. eps_i at
    eps = 0, by a nested tape (double backward). The examples' weights are
    max(a_i, 0) normalised over the pooled global batch; each stream's loss
    becomes the weighted mean sum_i w_i l_i / W_s, and the stream total W_s
    (they sum to 1) its mixing weight. One device only.
    """

    def prepare_streams(self, step, streams, target):
        if not streams:
            return streams
        if distribute.num_replicas() > 1:
            raise NotImplementedError(
                "rule='example_reweighting' runs on one device only (its collectives "
                "mismatch across replicas under tf.distribute): train it with "
                "train.distribute='none', or use another method under a strategy."
            )
        _, target_grads, _ = step.stream_gradients(target)
        epsilons = [tf.zeros_like(s.labels, dtype=tf.float32) for s in streams]
        with tf.GradientTape() as outer:
            outer.watch(epsilons)
            with tf.GradientTape() as inner:
                total = 0.0
                for stream, eps in zip(streams, epsilons):
                    total += tf.reduce_sum(eps * step.network.per_example_loss(stream))
            grads = inner.gradient(total, step.path_variables)
            alignment = tf.add_n(
                [
                    tf.reduce_sum(tf.cast(g, tf.float32) * tf.cast(t, tf.float32))
                    for g, t in zip(grads, target_grads)
                    if g is not None
                ]
            )
        alignments = outer.gradient(alignment, epsilons)
        alignments = [tf.zeros_like(e) if a is None else a for a, e in zip(alignments, epsilons)]
        # Rejected pseudo-labels stay out: only accepted examples can weigh > 0.
        alignments = [
            a if s.accepted is None else tf.where(s.accepted > 0.0, a, tf.zeros_like(a))
            for a, s in zip(alignments, streams)
        ]
        positive_sum = tf.add_n([tf.reduce_sum(tf.nn.relu(a)) for a in alignments])
        example_weights = baselines.example_weights_from_alignment(
            alignments, distribute.all_reduce_sum([positive_sum])[0]
        )
        totals = distribute.all_reduce_sum([tf.reduce_sum(w) for w in example_weights])
        return [
            dataclasses.replace(
                stream,
                example_weights=tf.math.divide_no_nan(w, total),
                accepted=None,
                stream_weight=total,
            )
            for stream, w, total in zip(streams, example_weights, totals)
        ]

    def stream_mix(self, step, streams, target, gradients) -> Mix:
        totals = tf.stack([s.stream_weight for s in streams])
        stream_weights = tf.tile(totals[:, None], [1, step.num_mixing_layers])
        return Mix(stream_weights, self.options.target_weight)
