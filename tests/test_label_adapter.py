"""Label adapters: a source's label relation M_s to the target's classes.

The layer (`networks.label_adapter`), its place in the model and the train step, the
relation's estimate (`callbacks.label_relations`) and the development sources whose
labels mean something else (`tasks.label_space_sources`).
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from configs import digits as digits_config
from gradmix_tf import experiment
from gradmix_tf import workdir as workdirs
from gradmix_tf.callbacks.label_relations import (
    LabelRelationEstimator,
    argmax_mismatches,
    estimate_label_relation,
)
from gradmix_tf.data.streams import DataError, LabelledStream
from gradmix_tf.errors import ConfigError
from gradmix_tf.networks.label_adapter import LabelAdapter, matched_classes
from gradmix_tf.tasks import digits, label_space_sources
from gradmix_tf.training.gradmix_model import GradMixModel
from gradmix_tf.training.options import GradMixOptions
from tests.model_testing import (
    OTHER_CLASSES,
    TARGET_CLASSES,
    cross_entropy,
    make_model,
    random_batch,
    train_step,
)

SUBSET = ("a", "c")  # a source with two of the target's three classes


def logits_and_labels(seed=0, count=6, num_classes=3, num_labels=3):
    rng = np.random.default_rng(seed)
    logits = tf.constant(rng.normal(size=(count, num_classes)), tf.float32)
    return logits, tf.constant(rng.integers(0, num_labels, count), tf.int32)


def adapter(matches=(0, 1, 2), num_target=3, **kwargs) -> LabelAdapter:
    layer = LabelAdapter(matches, num_target, **kwargs)
    layer.build()
    return layer


# ---------------------------------------------------------------------- the layer
def test_classes_are_matched_by_name_or_by_the_declared_relation():
    np.testing.assert_array_equal(matched_classes(TARGET_CLASSES, SUBSET), [0, 2])
    np.testing.assert_array_equal(matched_classes(TARGET_CLASSES, ("c", "z")), [2, -1])
    declared = matched_classes(TARGET_CLASSES, ("sneaker", "b"), {"sneaker": "a"})
    np.testing.assert_array_equal(declared, [0, 1])
    with pytest.raises(ValueError, match="source class 'boot'"):
        matched_classes(TARGET_CLASSES, ("sneaker",), {"boot": "a"})
    with pytest.raises(ValueError, match="'shoe', which is not a target class"):
        matched_classes(TARGET_CLASSES, ("sneaker",), {"sneaker": "shoe"})


def test_a_strong_name_match_is_the_target_heads_cross_entropy():
    logits, labels = logits_and_labels()
    layer = adapter(strength=40.0)
    np.testing.assert_allclose(
        layer.loss(labels, logits), cross_entropy(logits, labels), rtol=1e-5, atol=1e-5
    )


def test_masked_rows_condition_the_target_head_on_the_source_classes():
    """A subset source with masked absent rows: the softmax of h_T's logits of its classes."""
    logits, labels = logits_and_labels(num_labels=2)
    layer = adapter(matches=(0, 2), strength=40.0, absent_rows="masked")
    restricted = tf.gather(logits, [0, 2], axis=1)
    np.testing.assert_allclose(
        layer.loss(labels, logits), cross_entropy(restricted, labels), rtol=1e-5, atol=1e-5
    )
    # Uniform absent rows instead: class "b" counts half for each source class.
    uniform = adapter(matches=(0, 2), strength=40.0)
    q = tf.nn.softmax(logits).numpy()
    expected = q[:, [0, 2]] + q[:, [1]] / 2
    np.testing.assert_allclose(
        uniform.loss(labels, logits),
        -np.log(expected[np.arange(6), labels.numpy()]),
        rtol=1e-5,
        atol=1e-5,
    )


def test_a_uniform_relation_says_nothing_about_the_example():
    logits, labels = logits_and_labels()
    layer = adapter(start="uniform")
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = layer.loss(labels, logits)
    np.testing.assert_allclose(loss, np.full(6, np.log(3.0)), rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(loss, logits), 0.0, atol=1e-7)


def test_assigned_relation_reads_back_and_zero_rows_become_uniform():
    layer = adapter()
    relation = np.array([[0.0, 0.8, 0.2], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    layer.assign_relation(relation)
    got = layer.relation()
    np.testing.assert_allclose(got[0], [0.0, 0.8, 0.2], atol=1e-5)
    np.testing.assert_allclose(got[1], [1 / 3] * 3, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)
    assert argmax_mismatches(got, layer.matches) == 3  # a -> b, b uniform (argmax a), c -> a


def test_trace_penalty_adds_the_mean_matched_diagonal():
    logits, labels = logits_and_labels()
    plain, penalised = adapter(), adapter(trace_penalty=0.5)
    diagonal = np.diag(plain.relation()).mean()
    np.testing.assert_allclose(
        penalised.loss(labels, logits) - plain.loss(labels, logits), 0.5 * diagonal, rtol=1e-5
    )


def test_layer_config_round_trip():
    layer = adapter(matches=(2, -1), start="uniform", absent_rows="masked", trace_penalty=0.1)
    twin = LabelAdapter.from_config(layer.get_config())
    assert twin.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="at least one source class"):
        LabelAdapter((-1, -1), 3)


# ---------------------------------------------------------------------- the model
def test_sources_with_target_classes_get_adapters_others_keep_heads():
    sources = (TARGET_CLASSES, SUBSET, OTHER_CLASSES)
    model = make_model(sources, label_adapter=True)
    assert model.stream_adapters == [0, 1, None]
    assert model.stream_heads == [0, 0, 1]  # through h_T; "x", "y" have a head of their own
    assert [a.matches for a in model.label_adapters] == [(0, 1, 2), (0, 2)]
    assert len(model.heads) == 2
    estimating = make_model(sources, label_adapter=True, adapter_start="estimate",
                            adapter_warmup_epochs=1)  # fmt: skip
    assert estimating.stream_heads == [1, 2, 3]  # own heads for the warm-up
    assert float(estimating.label_adapters_active) == 0.0
    without = make_model(sources)  # today's: equal names share h_T, the others own heads
    assert without.stream_adapters == [None, None, None] and without.stream_heads == [0, 1, 2]


def test_adapter_sources_give_adapters_to_the_named_sources_only():
    sources = (TARGET_CLASSES, SUBSET, OTHER_CLASSES)
    model = make_model(sources, label_adapter=True, adapter_sources=("source_2",))
    assert model.stream_adapters == [None, 0, None]
    assert model.stream_heads == [0, 0, 1]  # source_1 shares h_T by name, as without adapters
    assert model.label_adapters[0].matches == (0, 2)
    with pytest.raises(ConfigError, match=r"adapter_sources names \['source_9'\], not sources"):
        make_model(sources, label_adapter=True, adapter_sources=("source_9",))


def test_an_adapter_stream_trains_h_T_and_its_relation():
    sources = (SUBSET,)
    model = make_model(sources, label_adapter=True, rule="uniform")
    logits_before = model.heads[0].kernel.numpy().copy()
    relation_before = model.label_adapters[0].relation_logits.numpy().copy()
    batch = random_batch(sources)
    batch["target"] = (batch["target"][0], batch["target"][1] * 0)  # only class a on target
    logs = train_step(model, batch)
    moved = np.abs(model.heads[0].kernel.numpy() - logits_before)
    assert moved[:, 2].max() > 1e-4  # class "c" is learned from the source alone
    assert np.abs(model.label_adapters[0].relation_logits.numpy() - relation_before).max() > 0
    assert np.isfinite(logs["loss/source_1"])


@pytest.mark.parametrize(
    "mixing", ["closed_form", "uniform", "persistent", "pcgrad", "example_reweighting",
               "pretrain_finetune"],
)  # fmt: skip
def test_every_mixing_rule_trains_through_the_adapters(mixing):
    """Joint training, PCGrad, pre-training then fine-tuning and example reweighting take the
    same adapters as GradMix, so that comparisons stay fair."""
    sources = (SUBSET, TARGET_CLASSES, OTHER_CLASSES)
    options = {"pretrain_steps": 5} if mixing == "pretrain_finetune" else {}
    model = make_model(sources, label_adapter=True, rule=mixing, **options)
    before = [a.relation_logits.numpy().copy() for a in model.label_adapters]
    logs = train_step(model, random_batch(sources))
    assert all(np.isfinite(v) for v in logs.values()), logs
    for adapter, start in zip(model.label_adapters, before):
        assert np.abs(adapter.relation_logits.numpy() - start).max() > 0, mixing


def test_during_the_warm_up_the_source_trains_only_its_own_head():
    sources = (TARGET_CLASSES,)
    model = make_model(
        sources, label_adapter=True, adapter_start="estimate", adapter_warmup_epochs=1,
        rule="uniform", target_weight=0.0,
    )  # fmt: skip
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    train_step(model, random_batch(sources))
    after = {v.path: v.numpy().copy() for v in model.trainable_variables}
    changed = {p for p in before if np.abs(after[p] - before[p]).max() > 0}
    assert any("head_1" in p for p in changed)
    assert not any("head_target" in p or "label_adapter" in p for p in changed), changed
    model.label_adapters[0].assign_relation(np.eye(3) * 0.8 + 0.2 / 3)  # as estimated
    model.label_adapters_active.assign(1.0)
    train_step(model, random_batch(sources, seed=1))
    assert np.abs(model.heads[0].kernel.numpy() - after[model.heads[0].kernel.path]).max() > 0


def test_save_and_load_keep_the_relations(tmp_path):
    sources = (SUBSET, OTHER_CLASSES)
    model = make_model(sources, label_adapter=True, optimizer=keras.optimizers.Adam(1e-2))
    train_step(model, random_batch(sources))
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.stream_adapters == model.stream_adapters
    np.testing.assert_array_equal(
        loaded.label_adapters[0].relation_logits.numpy(),
        model.label_adapters[0].relation_logits.numpy(),
    )
    declared = GradMixModel(
        keras.Sequential([keras.layers.Flatten()]), TARGET_CLASSES, [("sneaker",)],
        label_adapter=True, source_label_relations=[{"sneaker": "b"}],
    )  # fmt: skip
    twin = GradMixModel.from_config(declared.get_config())
    assert twin.source_label_relations == ({"sneaker": "b"},)
    assert twin.label_adapters[0].matches == (1,)


def test_options_check_the_adapter_fields():
    with pytest.raises(ConfigError, match="adapter_warmup_epochs > 0"):
        GradMixOptions(label_adapter=True, adapter_start="estimate")
    with pytest.raises(ConfigError, match="adapter_start must be one of"):
        GradMixOptions(adapter_start="identity")
    with pytest.raises(ConfigError, match="adapter_absent_rows must be one of"):
        GradMixOptions(adapter_absent_rows="zero")
    with pytest.raises(ConfigError, match="adapter_trace_penalty must be >= 0"):
        GradMixOptions(adapter_trace_penalty=-1.0)


# ---------------------------------------------------------------------- the estimate
def test_estimate_counts_what_h_T_predicts_against_the_source_labels():
    probabilities = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    labels = np.array([1, 1, 0, 0])
    relation = estimate_label_relation(probabilities, np.eye(2)[labels], smoothing=0.0)
    # Class 0: 2.5 examples, 2 labelled 1; class 1: 1.5 examples, all labelled 0.
    np.testing.assert_allclose(relation, [[0.5 / 2.5, 2 / 2.5], [1.0, 0.0]])
    smoothed = estimate_label_relation(np.zeros([2, 3]), np.eye(2))  # h_T predicts no class
    np.testing.assert_allclose(smoothed, 0.5)


def identity_model(sources, relation_start="estimate") -> GradMixModel:
    """h_T predicts the argmax of a one-hot "image" (trunk: Flatten; h_T: 20 x I)."""
    model = GradMixModel(
        keras.Sequential([keras.layers.Flatten()]), TARGET_CLASSES, sources,
        label_adapter=True, adapter_start=relation_start, adapter_warmup_epochs=2,
    )  # fmt: skip
    model.build((None, 3, 1, 1))
    model.heads[0].kernel.assign(20.0 * np.eye(3))
    model.heads[0].bias.assign(np.zeros(3))
    return model


def test_the_estimator_recovers_a_reordering_after_the_warm_up():
    reordering = np.array([2, 0, 1])  # digit c is labelled reordering[c]
    true_class = np.tile(np.arange(3), 20)
    stream = LabelledStream.from_arrays(
        "reordered", np.eye(3, dtype=np.float32)[true_class][:, :, None, None],
        reordering[true_class], TARGET_CLASSES,
    )  # fmt: skip
    model = identity_model([TARGET_CLASSES])
    estimator = LabelRelationEstimator([stream], warmup_epochs=2, refresh_every=3)
    assert [estimator.estimates_after(e) for e in range(6)] == [0, 1, 0, 0, 1, 0]
    estimator.estimate(model)
    relation = model.label_adapters[0].relation()
    np.testing.assert_array_equal(relation.argmax(axis=1), reordering)
    assert relation.max(axis=1).min() > 0.9
    assert float(model.label_adapters_active) == 1.0


def test_the_source_head_estimate_reads_the_trusted_target():
    """GLC: the source's own head's mean prediction on the labelled target of each class."""
    reordering = np.array([2, 0, 1])
    model = identity_model([TARGET_CLASSES])
    model.heads[1].kernel.assign(20.0 * np.eye(3)[reordering])  # predicts reordering[c]
    model.heads[1].bias.assign(np.zeros(3))
    true_class = np.tile(np.arange(3), 5)
    trusted = LabelledStream.from_arrays(
        "target", np.eye(3, dtype=np.float32)[true_class][:, :, None, None], true_class,
        TARGET_CLASSES,
    )  # fmt: skip
    estimator = LabelRelationEstimator(
        [trusted], warmup_epochs=2, trusted=trusted, estimate="source_head"
    )
    estimator.estimate(model)
    relation = model.label_adapters[0].relation()
    np.testing.assert_array_equal(relation.argmax(axis=1), reordering)
    assert relation.max(axis=1).min() > 0.8
    with pytest.raises(ValueError, match="source_head.* needs the trusted"):
        LabelRelationEstimator([trusted], 2, estimate="source_head")


def test_the_learning_rate_scale_moves_the_relation_faster():
    """Under Adam a step moves A_s by about scale x the learning rate; the relation it
    starts from and a relation assigned to it are the same at any scale."""
    logits, labels = logits_and_labels()
    moves = []
    for scale in (1.0, 10.0):
        layer = adapter(learning_rate_scale=scale)
        np.testing.assert_allclose(layer.relation(), adapter().relation(), rtol=1e-6)
        before = layer.log_relation().numpy()
        optimizer = keras.optimizers.Adam(1e-3)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(layer.loss(labels, logits))
        optimizer.apply(tape.gradient(loss, layer.trainable_variables), layer.trainable_variables)
        moves.append(np.abs(layer.log_relation().numpy() - before).max())
        layer.assign_relation(np.eye(3) * 0.7 + 0.1)
        np.testing.assert_allclose(layer.relation(), np.eye(3) * 0.7 + 0.1, rtol=1e-5)
    np.testing.assert_allclose(moves[1] / moves[0], 10.0, rtol=0.05)


# ---------------------------------------------------------------------- the dev sources
def true_relation(relation: str) -> np.ndarray:
    """[10, 10] the relation M[i, j] = P(label j | digit i) that `relation` is built to have."""
    sources, eye = label_space_sources, np.eye(10)
    return {
        "correct": eye,
        "reordered": eye[list(sources.REORDERING)],
        "half_random": (1 - sources.SYMMETRIC_NOISE) * eye + sources.SYMMETRIC_NOISE / 10,
        "pair_flips": (1 - sources.PAIR_FLIP_RATE) * eye
        + sources.PAIR_FLIP_RATE * np.roll(eye, 1, axis=1),
    }[relation]


def test_label_relations_of_the_development_sources():
    labels = np.repeat(np.arange(10), 100)
    reordered = label_space_sources.relabel(labels, "reordered")
    assert (reordered != labels).all()  # no digit keeps its id
    assert len(np.unique(reordered)) == 10
    flips = label_space_sources.relabel(labels, "pair_flips")
    for c in range(10):
        mine = flips[labels == c]
        assert (mine == (c + 1) % 10).sum() == 40 and (mine == c).sum() == 60
    noisy = label_space_sources.relabel(labels, "half_random")
    assert 0.5 < (noisy == labels).mean() < 0.6  # half replaced, a tenth of those by chance
    np.testing.assert_array_equal(label_space_sources.relabel(labels, "correct"), labels)
    np.testing.assert_array_equal(noisy, label_space_sources.relabel(labels, "half_random"))
    for relation in label_space_sources.RELATIONS:
        expected = true_relation(relation)
        np.testing.assert_allclose(expected.sum(axis=1), 1.0)
        noisy_labels = label_space_sources.relabel(labels, relation)
        observed = estimate_label_relation(np.eye(10)[labels], np.eye(10)[noisy_labels], 0.0)
        np.testing.assert_allclose(observed, expected, atol=0.08, err_msg=relation)
    with pytest.raises(DataError, match="unknown label relation"):
        label_space_sources.relabel(labels, "shuffled")


# ---------------------------------------------------------------------- a run
@pytest.mark.slow
def test_a_run_estimates_logs_and_reports_the_relations(tmp_path):
    """digits smoke (MNIST 0-4 + UCI 5-9 -> 0-9): both sources through h_T, the relations
    estimated after the first epoch, in results.json, as PNGs and in TensorBoard."""
    config = digits_config.get_config("smoke")
    config.method = "joint"
    config.step.label_adapter = True
    config.step.adapter_start = "estimate"
    config.step.adapter_warmup_epochs = 1
    workdir = str(tmp_path / "run")
    results = experiment.train_and_evaluate(config, workdir)
    relations = results["label_relations"]
    assert sorted(relations) == [digits.SOURCE_MNIST_STREAM, digits.SOURCE_UCI_STREAM]
    for name, summary in relations.items():
        relation = np.asarray(summary["relation"])
        assert relation.shape == (10, 5)
        np.testing.assert_allclose(relation.sum(axis=1), 1.0, atol=1e-3)
        assert 0 <= summary["argmax_mismatches"] <= 5
        assert os.path.getsize(os.path.join(workdir, f"label_relation_{name}.png")) > 1000
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["label_relations"] == relations
    events = os.listdir(os.path.join(workdir, "tensorboard", "label_relations"))
    assert events and events[0].startswith("events.out.tfevents")


def test_a_work_directory_from_before_the_adapters_resumes():
    """A stored config.json without the adapter fields is the same config as one with the
    adapters off, and differs from today's default (on) in what that run trained with."""
    config = digits_config.get_config("smoke")
    stored = workdirs.config_as_dict(config)
    for field in [f for f in stored["step"] if f.startswith(("label_adapter", "adapter_"))]:
        del stored["step"][field]
    differences = workdirs.config_differences(stored, workdirs.config_as_dict(config))
    assert differences == [
        ("step.label_adapter", False, True),
        ("step.adapter_learning_rate_scale", 1.0, 10.0),
    ]
    config.step.label_adapter = False
    config.step.adapter_learning_rate_scale = 1.0
    assert workdirs.config_differences(stored, workdirs.config_as_dict(config)) == []


@pytest.mark.slow
def test_an_old_work_directory_is_reported_and_evaluated(tmp_path):
    """A finished run whose config.json predates the adapter fields (trained without them):
    the config with them off finds it finished, and it is evaluated again from its stored
    config."""
    config = digits_config.get_config("smoke")
    config.step.label_adapter = False
    config.step.adapter_learning_rate_scale = 1.0
    old = str(tmp_path / "old")
    accuracy = experiment.train_and_evaluate(config, old)["target_test_accuracy"]
    path = os.path.join(old, "config.json")
    with open(path) as f:
        stored = json.load(f)
    stored["step"] = {
        k: v for k, v in stored["step"].items() if not k.startswith(("label_", "adapter_"))
    }
    with open(path, "w") as f:
        json.dump(stored, f)
    assert experiment.train_and_evaluate(config, old)["target_test_accuracy"] == accuracy
    evaluation = experiment.evaluate_workdir(old)
    np.testing.assert_allclose(evaluation["target_test_accuracy"], accuracy, atol=1e-6)
