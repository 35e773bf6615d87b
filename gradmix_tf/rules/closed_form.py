"""The closed form: layer-wise mixing weights from one meta-gradient step of the target."""

from __future__ import annotations

from gradmix_tf.mixing import weights
from gradmix_tf.rules.base import Mix, MixingRule, register_rule, weight_total


@register_rule("closed_form")
class ClosedFormRule(MixingRule):
    """w[s, l] from the alignment of stream s with the labelled target on layer l:
    one meta-gradient step from w = 0, u[s, l] = <g_T,l, g_s,l> (or the cosine),
    clipped at 0 and normalised (`mixing.weights`). The options `alignment`,
    `granularity`, `normalization` and `weight_total` are the reconstruction's
    choices (docs/algorithm.md)."""

    def stream_mix(self, step, streams, target, gradients) -> Mix:
        options = self.options
        dots, target_sq, stream_sq = gradients.layer_products()  # [S, L], [L], [S, L]
        solve = weights.solve_layer_weights_jit if options.jit_mixing_weights else None
        mixing_weights, _ = (solve or weights.solve_layer_weights)(
            dots,
            target_sq,
            stream_sq,
            alignment=options.alignment,
            granularity=options.granularity,
            normalization=options.normalization,
            weight_total=weight_total(options, gradients.num_streams),
        )
        return Mix(mixing_weights, options.target_weight)
