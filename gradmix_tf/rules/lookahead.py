"""The look-ahead: the exact meta-gradient of the target loss through a real update."""

from __future__ import annotations

import tensorflow as tf

from gradmix_tf import distribute
from gradmix_tf.mixing import lookahead, weights
from gradmix_tf.rules.base import Mix, MixingRule, register_rule, weight_total


@register_rule("lookahead")
class LookaheadRule(MixingRule):
    """u[s, l] = -(1/alpha) dL_T(theta'(w)) / dw at w = `lookahead_init`, through a
    look-ahead step of size alpha (`lookahead_step_size`, or the optimizer's
    learning rate) taken with `stateless_call` (`mixing.lookahead`); then the
    closed form's normalisation. It reads the streams' gradients themselves."""

    reads_gradients = True

    def stream_mix(self, step, streams, target, gradients) -> Mix:
        options = self.options
        num_layers = step.num_mixing_layers
        step_size = options.lookahead_step_size
        if step_size is None:
            step_size = step.learning_rate
        init = tf.fill([gradients.num_streams, num_layers], options.lookahead_init)
        u, _ = lookahead.lookahead_alignment(
            step.network.stateless_target_loss(target),
            [v.value for v in step.path_variables],
            gradients.streams,
            step.mixing_layer_ids,
            init,
            step_size,
        )
        u = distribute.all_reduce_sum([u])[0]
        if options.granularity == "stream":
            u = tf.tile(tf.reduce_sum(u, axis=1, keepdims=True), [1, num_layers])
        total = weight_total(options, gradients.num_streams)
        return Mix(
            weights.normalize_weights(u, options.normalization, total), options.target_weight
        )
