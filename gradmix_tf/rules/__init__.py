"""Mixing rules: GradMix and the baselines that share its trainer (`mixing=...`).

| name                  | rule                                                     |
| --------------------- | -------------------------------------------------------- |
| `gradmix`             | layer-wise weights from the target meta-objective        |
| `uniform`             | every stream weight 1: joint training                    |
| `pretrain_finetune`   | sources only, then the labelled target only              |
| `example_reweighting` | per-example weights on the pooled sources (Ren et al.)   |
| `pcgrad`              | gradient surgery over the streams and the target         |
| `persistent`          | weights kept across steps, moved along the alignment     |

See `gradmix_tf.rules.base` for the interface and how to add a rule.
"""

from gradmix_tf.rules import (  # noqa: F401  (each module registers its rule)
    example_reweighting,
    gradmix,
    joint,
    pcgrad,
    persistent,
    pretrain_finetune,
)
from gradmix_tf.rules.base import RULES, Mix, MixingRule, StreamBatch, make_rule, register_rule

__all__ = ["RULES", "Mix", "MixingRule", "StreamBatch", "make_rule", "register_rule"]
