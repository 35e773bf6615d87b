"""Mixing groups (`step.layer_groups`): which layers share one mixing weight a stream."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf.mixing.groups import block_name, group_name, mixing_groups
from gradmix_tf.training.gradmix_model import GradMixModel
from gradmix_tf.training.options import GradMixOptions
from tests.model_testing import (
    IMAGE_SHAPE,
    OTHER_CLASSES,
    TARGET_CLASSES,
    make_model,
    random_batch,
    train_step,
)

SOURCES = (TARGET_CLASSES, OTHER_CLASSES)
RULE_OPTIONS = {
    "closed_form": {},
    "lookahead": {"rule": "lookahead", "lookahead_init": 0.5},
    "closed_form_cosine_stream": {"alignment": "cosine", "granularity": "stream"},
    "closed_form_jit": {"jit_mixing_weights": True},
    "persistent": {"rule": "persistent", "alignment": "cosine"},
    "pcgrad": {"rule": "pcgrad"},
    "joint": {"rule": "uniform"},
    "pretrain_finetune": {"rule": "pretrain_finetune", "pretrain_steps": 1},
    "example_reweighting": {"rule": "example_reweighting"},
}


@pytest.mark.parametrize(
    "layer, block",
    [
        ("conv4_block2_1_conv", "conv4_block2"),  # ResNet
        ("conv2_block1_0_bn", "conv2_block1"),  # DenseNet
        ("pool2_conv", "pool2"),  # DenseNet transition
        ("conv1_conv", "conv1"),  # ResNet stem
        ("conv1_bn", "conv1"),
        ("expanded_conv_depthwise_bn", "expanded_conv"),  # MobileNetV2/V3 first block
        ("expanded_conv_10_squeeze_excite_conv_1", "expanded_conv_10"),
        ("block_3_expand_BN", "block_3"),  # MobileNetV2
        ("bn_Conv1", "Conv1"),
        ("Conv_1_bn", "Conv_1"),
        ("block2a_expand_conv", "block2a"),  # EfficientNet
        ("stem_conv", "stem"),
        ("top_bn", "top"),
        ("block1_conv2", "block1"),  # VGG
        ("convnext_tiny_stage_1_block_2_depthwise_conv", "convnext_tiny_stage_1_block_2"),
        ("conv", "conv"),  # MobileNetV3 stem, and small_cnn's layers: their own group
        ("conv_bn", "conv"),
        ("conv_1", "conv_1"),
        ("features", "features"),
        ("head_target", "head_target"),
    ],
)
def test_block_names(layer, block):
    assert block_name(layer) == block


def test_groups_keep_the_path_and_the_order_of_first_appearance():
    paths = ["gradmix/trunk/conv1", "block1_a", "block1_a", "block1_b", "block2_a", "block1_c"]
    assert mixing_groups(paths, "layer") == (
        ("gradmix/trunk/conv1", "block1_a", "block1_b", "block2_a", "block1_c"),
        [0, 1, 1, 2, 3, 4],
    )
    assert mixing_groups(paths, "block") == (
        ("gradmix/trunk/conv1", "block1", "block2"),
        [0, 1, 1, 1, 2, 1],
    )
    assert group_name("gradmix/trunk/expanded_conv_3_expand", "block") == (
        "gradmix/trunk/expanded_conv_3"
    )
    with pytest.raises(ValueError, match="layer_groups must be one of"):
        GradMixOptions(layer_groups="blocks")


@pytest.mark.parametrize("rule", sorted(RULE_OPTIONS))
def test_groups_equal_to_layers_train_exactly_as_layers(rule):
    """The tiny trunk's layers (conv, dense, head_target) are blocks of their own: "block"
    groups them as "layer" does, and every rule trains the same model, step for step."""
    options = RULE_OPTIONS[rule]
    by_layer = make_model(SOURCES, num_unlabelled=6, **options)
    by_block = make_model(SOURCES, num_unlabelled=6, layer_groups="block", **options)
    assert by_block.mixing_layer_names == by_layer.mixing_layer_names
    assert by_block.mixing_layer_ids == by_layer.mixing_layer_ids
    for seed in range(2):
        batch = random_batch(SOURCES, seed=seed, num_unlabelled=6)
        logs_layer = train_step(by_layer, batch, "graph")
        logs_block = train_step(by_block, batch, "graph")
        assert logs_block == logs_layer
        np.testing.assert_array_equal(by_block.mixing_weights, by_layer.mixing_weights)
    for got, expected in zip(by_block.get_weights(), by_layer.get_weights()):
        np.testing.assert_array_equal(got, expected)


def block_trunk() -> keras.Sequential:
    """Two layers of one block ("block1") and one of another: 2 trunk groups, 3 layers."""
    return keras.Sequential(
        [
            keras.layers.Conv2D(4, 3, activation="relu", name="block1_conv"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(8, activation="relu", name="block1_dense"),
            keras.layers.Dense(8, activation="relu", name="block2_dense"),
        ],
        name="trunk",
    )


def block_model(layer_groups: str, **options) -> GradMixModel:
    keras.utils.set_random_seed(0)
    model = GradMixModel(
        block_trunk(), TARGET_CLASSES, (TARGET_CLASSES,), layer_groups=layer_groups, **options
    )
    model.build((None, *IMAGE_SHAPE))
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model


@pytest.mark.parametrize("rule", ["closed_form", "lookahead"])
def test_a_group_weight_is_the_alignment_summed_over_its_layers(rule):
    """A source equal to the target aligns with it by |g_T,l|^2 > 0 on every layer; with
    no normalisation a group's weight is the sum of its layers' weights."""
    options = {"normalization": "none", "rule": rule}
    options["adaptive_learning_rate"] = False
    by_layer, by_block = block_model("layer", **options), block_model("block", **options)
    assert by_layer.num_mixing_layers == 4
    assert by_block.mixing_layer_names == (
        "gradmix/trunk/block1",
        "gradmix/trunk/block2",
        "gradmix/head_target",
    )
    batch = random_batch((TARGET_CLASSES,))
    batch["sources"] = (batch["target"],)
    train_step(by_layer, batch, "graph")
    train_step(by_block, batch, "graph")
    layer_weights = by_layer.mixing_weights.numpy()[0]  # conv, dense1, dense2, head
    assert np.all(layer_weights > 0)
    np.testing.assert_allclose(
        by_block.mixing_weights.numpy()[0],
        [layer_weights[0] + layer_weights[1], layer_weights[2], layer_weights[3]],
        rtol=1e-5,
    )


@pytest.mark.parametrize("rule", sorted(RULE_OPTIONS))
def test_every_rule_trains_with_fewer_groups_than_layers(rule):
    model = block_model("block", **RULE_OPTIONS[rule])
    before = [v.numpy() for v in model.trainable_variables]
    for seed in range(2):
        logs = train_step(model, random_batch((TARGET_CLASSES,), seed=seed), "graph")
        assert np.isfinite(logs["loss"])
    weights = model.mixing_weights.numpy()
    assert weights.shape == (1, 3) and np.all(np.isfinite(weights))
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
    assert any(changed)
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)


def test_jit_solve_with_groups_equals_the_plain_solve():
    plain, jit = block_model("block"), block_model("block", jit_mixing_weights=True)
    batch = random_batch((TARGET_CLASSES,))
    train_step(plain, batch, "graph")
    train_step(jit, batch, "graph")
    np.testing.assert_allclose(jit.mixing_weights, plain.mixing_weights, rtol=1e-6, atol=1e-7)
    tf.debugging.assert_equal(tf.shape(plain.mixing_weights), [1, 3])
