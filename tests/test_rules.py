"""Mixing rules as objects, and the options declared once (`GradMixOptions`)."""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from configs import digits
from gradmix_tf import rules
from gradmix_tf.mixing import weights
from gradmix_tf.rules import Mix, MixingRule, register_rule
from gradmix_tf.training.gradmix_model import GradMixModel
from gradmix_tf.training.options import GradMixOptions
from tests.model_testing import OTHER_CLASSES, TARGET_CLASSES, make_model, random_batch

SOURCES = (TARGET_CLASSES, OTHER_CLASSES)


def test_every_method_rule_is_registered_and_chosen_once():
    assert set(rules.RULES) == {
        "closed_form",
        "lookahead",
        "uniform",
        "pretrain_finetune",
        "example_reweighting",
        "pcgrad",
        "persistent",
    }
    for name, cls in rules.RULES.items():
        options = GradMixOptions(rule=name, pretrain_steps=1)
        rule = rules.make_rule(options)
        assert isinstance(rule, cls) and rule.name == name and rule.options is options
    model = make_model(SOURCES, rule="pcgrad")
    assert type(model.rule) is rules.RULES["pcgrad"]


def test_an_unknown_rule_names_the_known_ones():
    with pytest.raises(ValueError, match="rule must be one of .*'closed_form'.*got 'gradmx'"):
        GradMixOptions(rule="gradmx")


def test_a_new_rule_is_one_class_and_a_name():
    """A rule registered in its own module is selectable as `rule=name`, nothing else."""

    @register_rule("test_half")
    class HalfRule(MixingRule):
        def stream_mix(self, step, streams, target, gradients):
            shape = [gradients.num_streams, step.num_mixing_layers]
            return Mix(tf.fill(shape, 0.5), self.options.target_weight)

    try:
        model = make_model(SOURCES, rule="test_half")
        tf.function(model.train_step)(random_batch(SOURCES))
        np.testing.assert_array_equal(model.mixing_weights.numpy(), 0.5)
        with pytest.raises(ValueError, match="registered already"):
            register_rule("test_half")(HalfRule)
    finally:
        del rules.RULES["test_half"]


def test_pretrain_finetune_with_no_labelled_target_weight_stays_finite():
    """lambda_T = 0 once gave NaN head gradients (the phase was recovered by a division)."""
    model = make_model(SOURCES, rule="pretrain_finetune", pretrain_steps=1, target_weight=0.0)
    head = model.heads[1].kernel
    step = tf.function(model.train_step)
    before = head.numpy()
    step(random_batch(SOURCES, seed=0))  # pre-training: the source head trains
    pretrained = head.numpy()
    assert np.isfinite(pretrained).all() and np.abs(pretrained - before).max() > 0
    step(random_batch(SOURCES, seed=1))  # fine-tuning: the source head rests
    np.testing.assert_array_equal(head.numpy(), pretrained)
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)


def test_options_from_the_config_cover_every_field():
    config = digits.get_config()
    config.train.steps = 400
    config.step.pretrain_fraction = 0.25
    config.step.weight_total = "2.5"  # a command-line override of a string field
    options = GradMixOptions.from_config(config)
    assert options.pretrain_steps == 100
    assert options.weight_total == 2.5
    assert options.lookahead_step_size is None  # 0 in the config
    assert options.on_nonfinite == config.train.on_nonfinite
    assert options.pseudo_label_confidence_weights == config.pseudo_labels.confidence_weights
    for field in set(GradMixOptions.field_names()) - {
        "pretrain_steps",
        "weight_total",
        "lookahead_step_size",
        "on_nonfinite",
        "pseudo_label_confidence_weights",
    }:
        assert getattr(options, field) == config.step[field], field


def test_a_config_with_an_unknown_gradmix_field_fails():
    config = digits.get_config()
    config.step = ml_collections.ConfigDict({**config.step.to_dict(), "mixng": "x"})
    with pytest.raises(ValueError, match="unknown gradmix option.*mixng"):
        GradMixOptions.from_config(config)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("r_min", 0.0, "r_min"),
        ("weight_total", "many", "weight_total"),
        ("rho_decay", 1.0, "rho_decay"),
        ("on_nonfinite", "ignore", "on_nonfinite"),
        ("lookahead_step_size", -1.0, "lookahead_step_size"),
    ],
)
def test_options_check_their_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        GradMixOptions(**{field: value})


def test_model_config_is_derived_from_the_options():
    options = GradMixOptions(rule="uniform", target_weight=0.5, adaptive_learning_rate=False)
    model = make_model(SOURCES, options=options)
    assert model.options == options
    config = model.get_config()
    assert {k: config[k] for k in GradMixOptions.field_names()} == dataclasses.asdict(options)
    clone = GradMixModel.from_config(config)
    assert clone.options == options
    # Keyword arguments replace fields of `options`.
    assert make_model(SOURCES, options=options, target_weight=2.0).options.target_weight == 2.0


def test_persistent_step_by_hand():
    w = tf.constant([[1.0, 2.95], [0.01, 1.0]])
    u = tf.constant([[0.5, 1.0], [-1.0, -0.25]])
    got = weights.persistent_step(w, u, 0.1, 3.0).numpy()
    np.testing.assert_allclose(got, [[1.05, 3.0], [0.0, 0.975]], rtol=1e-6)


def test_persistent_weights_start_at_one_move_by_the_cosine_and_persist():
    model = make_model(SOURCES, rule="persistent", alignment="cosine", persistent_step_size=0.1)
    state = model.rule.weights
    assert any(v is state for v in model.non_trainable_variables)  # checkpointed with the model
    np.testing.assert_array_equal(state.numpy(), 1.0)
    batch = random_batch(SOURCES, seed=0)
    # The expected cosines, from this batch's gradients at the current weights.
    streams, target = model._stream_batches(batch)
    context = model._step_context()
    grads = [context.stream_gradients(s)[1] for s in streams]
    target_grads = context.stream_gradients(target)[1]
    layer_ids = tf.constant(model.mixing_layer_ids, tf.int32)
    products = weights.per_variable_products(target_grads, grads)
    layer_products = [weights.layer_sums(p, layer_ids, model.num_mixing_layers) for p in products]
    cos = weights.alignment_scores(*layer_products, "cosine").numpy()
    step = tf.function(model.train_step)
    step(batch)
    expected = np.clip(1.0 + 0.1 * cos, 0.0, 3.0)
    np.testing.assert_allclose(state.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.mixing_weights.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert np.abs(expected - 1.0).max() > 1e-3
    # The next step starts from the stored weights.
    step(random_batch(SOURCES, seed=1))
    assert np.abs(state.numpy() - expected).max() > 1e-4


def test_a_skipped_batch_leaves_the_persistent_weights():
    model = make_model(SOURCES, rule="persistent", alignment="cosine", on_nonfinite="skip")
    step = tf.function(model.train_step)
    step(random_batch(SOURCES, seed=0))
    before = model.rule.weights.numpy()
    batch = random_batch(SOURCES, seed=1)
    x, y = batch["target"]
    batch["target"] = (x * np.nan, y)
    step(batch)
    assert int(model.nonfinite_skipped.numpy()) == 1
    np.testing.assert_array_equal(model.rule.weights.numpy(), before)
