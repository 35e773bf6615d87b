"""Source pre-training, then target fine-tuning, as a mixing rule."""

from __future__ import annotations

from gradmix_tf.mixing import baselines
from gradmix_tf.rules.base import Mix, MixingRule, register_rule


@register_rule("pretrain_finetune")
class PretrainFinetuneRule(MixingRule):
    """The first `pretrain_steps` steps train on the sources only (weights 1,
    lambda_T 0); the later steps on the labelled target only (weights 0,
    lambda_T as set), while the source heads rest."""

    def mix(self, step, streams, target, gradients) -> Mix:
        stream_weights, target_factor = baselines.pretrain_finetune_weights(
            step.iterations,
            self.options.pretrain_steps,
            gradients.num_streams,
            step.num_mixing_layers,
        )
        return Mix(
            stream_weights,
            self.options.target_weight * target_factor,
            source_head_scale=1.0 - target_factor,
        )
