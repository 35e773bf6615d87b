"""Mixing groups: which layers of the target's path share one mixing weight a stream.

`GradMixModel` finds the layers l of the layer-wise weights w [S, L] from its
variables' paths (a layer that owns trainable variables is a mixing layer,
named by its path: "gradmix/trunk/conv1", "expanded_conv_3_expand", ...).
`layer_groups` (`GradMixOptions.layer_groups`, config `step.layer_groups`)
maps those layers to groups, and the weights become w [S, G], one a stream
and group:

- "layer": every layer is its own group (G = L; the default).
- "block": the layers of one block of a `keras.applications` network form a
  group, by the block prefix of their names (`block_name`), so a network of
  ~150 layers is mixed in ~15-60 groups: "conv4_block2_1_conv" ->
  "conv4_block2" (ResNet, DenseNet), "expanded_conv_3_expand" ->
  "expanded_conv_3" (MobileNetV2/V3), "block2a_expand_conv" -> "block2a"
  (EfficientNet), "block_3_depthwise" -> "block_3" (MobileNetV2),
  "block1_conv2" -> "block1" (VGG, Xception), "..._stage_1_block_2_..." (ConvNeXt).
  A layer outside blocks joins its batch normalisation: "conv1_conv" and
  "conv1_bn" -> "conv1", "stem_conv" and "stem_bn" -> "stem", "Conv1" and
  "bn_Conv1" -> "Conv1". Any other layer ("features", "head_target", the
  layers of `small_cnn`) stays a group of its own, so for those trunks
  "block" equals "layer".

Within a group, the products of step 4 are summed over every variable of the
group's layers, exactly as over a layer's kernel and bias.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

LAYER_GROUPS = ("layer", "block")

BLOCK_PATTERNS = (
    # ResNet, DenseNet (conv4_block2), EfficientNet (block2a), MobileNetV2 (block_3),
    # VGG and Xception (block1), ConvNeXt (convnext_tiny_stage_1_block_2).
    re.compile(r"^(.*?block_?\d+[a-z]?)(?:_|$)"),
    # MobileNetV2 / V3 inverted residual blocks (expanded_conv, expanded_conv_3).
    re.compile(r"^(expanded_conv(?:_\d+)?)(?:_|$)"),
)
NORMALISATION_AFFIXES = re.compile(r"^bn_|_(?:bn|conv)$", re.IGNORECASE)
"""A layer outside blocks: its name without these joins its convolution's group."""


def block_name(layer_name: str) -> str:
    """The block a layer (its own name, no path) belongs to.

    >>> block_name("conv4_block2_1_conv"), block_name("expanded_conv_depthwise_bn")
    ('conv4_block2', 'expanded_conv')
    >>> block_name("conv_1_bn"), block_name("features")
    ('conv_1', 'features')
    """
    for pattern in BLOCK_PATTERNS:
        found = pattern.match(layer_name)
        if found:
            return found.group(1)
    return NORMALISATION_AFFIXES.sub("", layer_name) or layer_name


def group_name(layer_path: str, layer_groups: str = "layer") -> str:
    """The group of the layer at `layer_path` ("gradmix/trunk/conv1", "conv_bn", ...).

    A path keeps its prefix; only its last part (the layer's name) is grouped.
    """
    if layer_groups == "layer":  # or "block" (`LAYER_GROUPS`, checked by `GradMixOptions`)
        return layer_path
    prefix, _, name = layer_path.rpartition("/")
    block = block_name(name)
    return f"{prefix}/{block}" if prefix else block


def mixing_groups(
    layer_paths: Sequence[str], layer_groups: str = "layer"
) -> tuple[tuple[str, ...], list[int]]:
    """The groups of the target path's layers.

    Args:
        layer_paths: V layer paths, one per variable of the target's path (repeats
            for the variables of one layer).
        layer_groups: "layer" or "block".

    Returns:
        (group names [G] in order of first appearance, group id of each variable [V]).
    """
    groups = [group_name(path, layer_groups) for path in layer_paths]
    names = tuple(dict.fromkeys(groups))
    index = {name: i for i, name in enumerate(names)}
    return names, [index[group] for group in groups]
