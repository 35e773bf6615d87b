"""Tests of the baselines' gradient rules (`mixing.baselines`) and of their model paths."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from configs import digits
from gradmix_tf import experiment
from gradmix_tf.mixing import baselines
from tests import model_testing as testing


def pcgrad_reference(vectors):
    """PCGrad on explicit vectors (fixed order), the sum of the projected gradients."""
    projected = []
    for i, g in enumerate(vectors):
        g = g.copy()
        for j, other in enumerate(vectors):
            if j != i and g @ other < 0:
                g -= (g @ other) / (other @ other) * other
        projected.append(g)
    return np.sum(projected, axis=0)


# --------------------------------------------------------------------- PCGrad
def test_coefficients_reproduce_surgery_on_vectors():
    rng = np.random.default_rng(0)
    for _ in range(5):
        vectors = rng.normal(size=(4, 7))
        coefficients = baselines.pcgrad_coefficients(vectors @ vectors.T).numpy()
        np.testing.assert_allclose(
            coefficients @ vectors, pcgrad_reference(vectors), rtol=1e-6, atol=1e-4
        )


def test_no_conflict_is_plain_sum():
    vectors = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    np.testing.assert_allclose(
        baselines.pcgrad_coefficients(vectors @ vectors.T), [1.0, 1.0, 1.0], rtol=1e-6, atol=1e-6
    )


def test_opposite_gradients_cancel_their_conflict():
    vectors = np.array([[1.0, 0.0], [-1.0, 0.0]])
    coefficients = baselines.pcgrad_coefficients(vectors @ vectors.T).numpy()
    np.testing.assert_allclose(coefficients @ vectors, [0.0, 0.0], rtol=1e-6, atol=1e-6)


def test_gram_matrix_of_variable_lists():
    grads = [[tf.ones([2, 2]), tf.constant([1.0])], [tf.zeros([2, 2]), tf.constant([3.0])]]
    np.testing.assert_allclose(
        baselines.gram_matrix(grads), [[5.0, 3.0], [3.0, 9.0]], rtol=1e-6, atol=1e-6
    )


# ------------------------------------------------------------ example weights
def test_positive_part_normalised_over_the_pooled_batch():
    weights = baselines.example_weights_from_alignment(
        [tf.constant([1.0, -2.0]), tf.constant([3.0])]
    )
    np.testing.assert_allclose(weights[0], [0.25, 0.0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(weights[1], [0.75], rtol=1e-6, atol=1e-6)


def test_nothing_aligned_gives_zero_weights():
    weights = baselines.example_weights_from_alignment([tf.constant([-1.0, 0.0])])
    np.testing.assert_allclose(weights[0], [0.0, 0.0], rtol=1e-6, atol=1e-6)


def test_nested_tape_alignments_equal_per_example_gradients():
    """a_i = <g_T, grad l_i> from the double backward equals the explicit loop."""
    sources = (testing.TARGET_CLASSES, testing.OTHER_CLASSES)
    model = testing.make_model(sources, rule="example_reweighting")
    batch = testing.random_batch(sources, count=3)
    streams, target = model._stream_batches(batch)
    reweighted = model.rule.prepare_streams(model._step_context(), streams, target)
    totals = [s.stream_weight for s in reweighted]

    target_x, target_y = batch["target"]
    variables = model.path_variables
    with tf.GradientTape() as tape:
        logits = model.heads[0](model.trunk(target_x))
        target_loss = tf.reduce_mean(testing.cross_entropy(logits, target_y))
    target_grads = tape.gradient(target_loss, variables)
    expected = []
    for x, y, head in ((s.x, s.labels, s.head) for s in streams):
        per_stream = []
        for i in range(x.shape[0]):
            with tf.GradientTape() as tape:
                logits = model.heads[head](model.trunk(x[i : i + 1]))
                loss = testing.cross_entropy(logits, y[i : i + 1])[0]
            grads = tape.gradient(loss, variables)
            per_stream.append(
                sum(
                    float(tf.reduce_sum(g * t))
                    for g, t in zip(grads, target_grads)
                    if g is not None
                )
            )
        expected.append(np.maximum(per_stream, 0.0))
    total = sum(e.sum() for e in expected)
    assert total > 0.0
    np.testing.assert_allclose(totals, [e.sum() / total for e in expected], rtol=1e-4, atol=1e-6)
    for stream, e in zip(reweighted, expected):
        weights = stream.example_weights
        assert stream.accepted is None
        np.testing.assert_allclose(weights, e / e.sum() if e.sum() else e, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------- pretrain finetune
def test_phases_switch_at_pretrain_steps():
    weights, target = baselines.pretrain_finetune_weights(1, 2, 2, 3)
    np.testing.assert_allclose(weights, np.ones([2, 3]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(target, 0.0, rtol=1e-6, atol=1e-6)
    weights, target = baselines.pretrain_finetune_weights(2, 2, 2, 3)
    np.testing.assert_allclose(weights, np.zeros([2, 3]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(target, 1.0, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_pretraining_ignores_target_then_finetuning_ignores_sources(mode):
    sources = (testing.OTHER_CLASSES,)  # own head: h_T sees only the target stream
    model = testing.make_model(sources, rule="pretrain_finetune", pretrain_steps=1)
    head_target = model.heads[0].kernel.numpy()
    testing.train_step(model, testing.random_batch(sources, seed=1), mode)
    np.testing.assert_allclose(model.mixing_weights, np.ones([1, 3]), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(model.heads[0].kernel.numpy(), head_target)  # SGD, no target loss
    source_head = model.heads[1].kernel.numpy()
    testing.train_step(model, testing.random_batch(sources, seed=2), mode)
    np.testing.assert_allclose(model.mixing_weights, np.zeros([1, 3]), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(model.heads[1].kernel.numpy(), source_head)
    assert not np.allclose(model.heads[0].kernel.numpy(), head_target, rtol=1e-6, atol=1e-6)


def test_needs_pretrain_steps():
    with pytest.raises(ValueError, match="pretrain_steps > 0"):
        testing.make_model((testing.OTHER_CLASSES,), rule="pretrain_finetune")


# ------------------------------------------------------------- baseline steps
@pytest.mark.parametrize("unlabelled", [0, 6])
@pytest.mark.parametrize("mode", ["eager", "graph"])
@pytest.mark.parametrize("mixing", ["example_reweighting", "pcgrad"])
def test_step_is_finite_and_changes_the_model(mixing, mode, unlabelled):
    sources = (testing.TARGET_CLASSES, testing.OTHER_CLASSES)
    model = testing.make_model(sources, rule=mixing, num_unlabelled=unlabelled)
    if unlabelled:
        model.pseudo_labels.assign(np.arange(unlabelled) % 3)
        model.pseudo_label_weights.assign(np.linspace(0.0, 1.0, unlabelled))
    before = testing.trainable_values(model)
    logs = testing.train_step(model, testing.random_batch(sources, num_unlabelled=unlabelled), mode)
    assert all(np.isfinite(v) for v in logs.values()), logs
    assert np.all(np.isfinite(model.mixing_weights.numpy()))
    assert any(not np.allclose(a, b) for a, b in zip(before, testing.trainable_values(model)))
    if mixing == "example_reweighting":  # stream shares of the pooled weight
        np.testing.assert_allclose(
            tf.reduce_sum(model.mixing_weights[:, 0]), 1.0, rtol=1e-6, atol=1e-5
        )


def test_pcgrad_of_identical_streams_is_joint_training():
    """Streams that never conflict: PCGrad changes nothing, the step is joint training's."""
    sources = (testing.TARGET_CLASSES,)
    batch = testing.random_batch(sources)
    batch["sources"] = (batch["target"],)
    pcgrad = testing.make_model(sources, rule="pcgrad", adaptive_learning_rate=False)
    joint = testing.make_model(sources, rule="uniform", adaptive_learning_rate=False)
    testing.train_step(pcgrad, batch)
    testing.train_step(joint, batch)
    for a, b in zip(testing.trainable_values(pcgrad), testing.trainable_values(joint)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- method presets
@pytest.mark.parametrize("method", experiment.METHODS)
def test_method_resolves_and_builds(method):
    config = digits.get_config("smoke")
    config.method = method
    resolved = experiment.resolve_config(config)
    if method == "gradmix" or method.startswith("persistent"):
        assert resolved.step.rule == "persistent"
    elif method.startswith("closed_form"):
        assert resolved.step.rule == "closed_form"
    data = experiment.build_data(resolved)
    keras.backend.clear_session()
    model = experiment.build_model(resolved, data)
    no_sources = method in ("target_only", "oracle")
    assert len(model.source_names) == (0 if no_sources else 2)
