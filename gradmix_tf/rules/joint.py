"""Joint training as a mixing rule: every stream weight 1."""

from __future__ import annotations

import tensorflow as tf

from gradmix_tf.rules.base import Mix, MixingRule, register_rule


@register_rule("uniform")
class UniformRule(MixingRule):
    """w[s, l] = 1: the mixed gradient is the sum of the streams' and lambda_T g_T."""

    def stream_mix(self, step, streams, target, gradients) -> Mix:
        shape = [gradients.num_streams, step.num_mixing_layers]
        return Mix(tf.ones(shape), self.options.target_weight)
