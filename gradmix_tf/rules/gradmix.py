"""GradMix's rule: layer-wise mixing weights from the target meta-objective."""

from __future__ import annotations

import tensorflow as tf

from gradmix_tf import distribute
from gradmix_tf.mixing import lookahead, weights
from gradmix_tf.rules.base import Mix, MixingRule, register_rule


@register_rule("gradmix")
class GradMixRule(MixingRule):
    """w[s, l] from the alignment of stream s with the labelled target on layer l.

    `weight_solver="closed_form"`: one meta-gradient step from w = 0,
    u[s, l] = <g_T,l, g_s,l> (or the cosine), clipped at 0 and normalised
    (`mixing.weights`). `"lookahead"`: the exact meta-gradient through a real
    look-ahead step from `lookahead_init` (`mixing.lookahead`), then the same
    normalisation. The options `alignment`, `granularity`, `normalization`
    and `weight_total` are the reconstruction's choices (docs/algorithm.md).
    """

    def stream_mix(self, model, streams, target, gradients) -> Mix:
        options = self.options
        num_streams, num_layers = gradients.num_streams, model.num_mixing_layers
        total = num_streams if options.weight_total == "num_streams" else options.weight_total
        if options.weight_solver == "lookahead":
            u = self._lookahead_alignment(model, target, gradients.streams)
            if options.granularity == "stream":
                u = tf.tile(tf.reduce_sum(u, axis=1, keepdims=True), [1, num_layers])
            mixing_weights = weights.normalize_weights(u, options.normalization, total)
            return Mix(mixing_weights, options.target_weight)
        # The products per layer already ([S, L], [L], [S, L]): each layer its own "variable".
        dots, target_sq, stream_sq = gradients.layer_products()
        solve = weights.solve_mixing_weights_jit if options.jit_mixing_weights else None
        mixing_weights, _ = (solve or weights.solve_mixing_weights)(
            dots,
            target_sq,
            stream_sq,
            tf.range(num_layers, dtype=tf.int32),
            num_layers,
            alignment=options.alignment,
            granularity=options.granularity,
            normalization=options.normalization,
            weight_total=total,
        )
        return Mix(mixing_weights, options.target_weight)

    def _lookahead_alignment(self, model, target, stream_grads):
        """u [S, L] = -(1/alpha) dL_T(theta'(w)) / dw at w = `lookahead_init` (global)."""
        step_size = self.options.lookahead_step_size
        if step_size is None:
            step_size = model.optimizer.learning_rate
        num_layers = model.num_mixing_layers
        init = tf.fill([len(stream_grads), num_layers], self.options.lookahead_init)
        u, _ = lookahead.lookahead_alignment(
            model.stateless_target_loss(target),
            [v.value for v in model.path_variables],
            stream_grads,
            model.mixing_layer_ids,
            init,
            step_size,
        )
        return distribute.all_reduce_sum([u])[0]
