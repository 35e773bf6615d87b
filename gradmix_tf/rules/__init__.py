"""Mixing rules: GradMix's and the baselines' that share its trainer (`step.rule=...`).

| name                  | rule                                                     |
| --------------------- | -------------------------------------------------------- |
| `closed_form`         | layer-wise weights from one meta-gradient step           |
| `lookahead`           | the exact meta-gradient through a look-ahead step        |
| `uniform`             | every stream weight 1: joint training                    |
| `pretrain_finetune`   | sources only, then the labelled target only              |
| `example_reweighting` | per-example weights on the pooled sources (Ren et al.)   |
| `pcgrad`              | gradient surgery over the streams and the target         |
| `persistent`          | weights kept across steps, moved along the alignment     |

See `gradmix_tf.rules.base` for the interface and how to add a rule.
"""

from gradmix_tf.rules import (  # noqa: F401  (each module registers its rule)
    closed_form,
    example_reweighting,
    joint,
    lookahead,
    pcgrad,
    persistent,
    pretrain_finetune,
)
from gradmix_tf.rules.base import RULES, Mix, MixingRule, StreamBatch, make_rule, register_rule

__all__ = ["RULES", "Mix", "MixingRule", "StreamBatch", "make_rule", "register_rule"]
