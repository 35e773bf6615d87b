"""Mixing weights that persist across steps and move with the streams' alignment."""

from __future__ import annotations

import keras

from gradmix_tf.mixing import weights
from gradmix_tf.rules.base import Mix, MixingRule, register_rule


@register_rule("persistent")
class PersistentRule(MixingRule):
    """w [S, L] starts at `persistent_init` (1: joint training) and, every step,
    moves by `persistent_step_size` times the per-layer alignment (`alignment`;
    the step size assumes "cosine", values in [-1, 1], as the method
    `persistent_pseudo_labels` sets it) of each stream's global gradient with the
    target's, clipped to [0, `persistent_max`], with no renormalisation
    (`mixing.weights.persistent_step`). The weights are model state: saved in
    checkpoints, the same on every replica, unchanged by a skipped batch.

    Reference: in the spirit of weights learned across the run by
    meta-gradient steps (Chen et al., ICLR 2022, "Weighted Training for
    Cross-Task Learning"; Lin et al., NeurIPS 2019, OL-AUX); here a plain
    projected step along the alignment.
    """

    def build(self, add_weight, num_streams, num_layers):
        self.weights = add_weight(
            shape=(num_streams, num_layers),
            initializer=keras.initializers.Constant(self.options.persistent_init),
            trainable=False,
            aggregation="only_first_replica",
            name="persistent_mixing_weights",
        )

    def stream_mix(self, step, streams, target, gradients) -> Mix:
        options = self.options
        dots, target_sq, stream_sq = gradients.layer_products()  # [S, L], [L], [S, L]
        u = weights.alignment_scores(dots, target_sq, stream_sq, options.alignment)
        new = weights.persistent_step(
            self.weights.value, u, options.persistent_step_size, options.persistent_max
        )
        return Mix(new, options.target_weight, state=(new,))

    def assign_state(self, state):
        (new,) = state
        self.weights.assign(new)
