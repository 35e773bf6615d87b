"""PCGrad (Yu et al., NeurIPS 2020) over the streams and the target, as a mixing rule."""

from __future__ import annotations

import tensorflow as tf

from gradmix_tf.mixing import baselines
from gradmix_tf.rules.base import Mix, MixingRule, register_rule


@register_rule("pcgrad")
class PCGradRule(MixingRule):
    """Gradient surgery on the global gradients of the streams and lambda_T g_T,
    in coefficient space (`mixing.baselines.pcgrad_coefficients`): one weight
    a stream, applied to every layer. It reads the streams' gradients themselves."""

    reads_gradients = True

    def stream_mix(self, step, streams, target, gradients) -> Mix:
        target_weight = self.options.target_weight
        tasks = gradients.streams + [[target_weight * g for g in gradients.target]]
        coefficients = baselines.pcgrad_coefficients(baselines.gram_matrix(tasks))
        stream_weights = tf.tile(coefficients[:-1, None], [1, step.num_mixing_layers])
        return Mix(stream_weights, target_weight * coefficients[-1])
