"""Tests of `GradMixModel.train_step` (steps 1-7 of docs/algorithm.md) on a tiny trunk and 8x8x1 images."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf.data.streams import LabelledStream, MultiStreamData, TargetSplit
from gradmix_tf.training.gradmix_model import GradMixModel
from tests.model_testing import (
    IMAGE_SHAPE,
    LEARNING_RATE,
    MODES,
    OTHER_CLASSES,
    TARGET_CLASSES,
    assert_logs_close,
    copy_of,
    cross_entropy,
    images,
    make_model,
    random_batch,
    tiny_trunk,
    train_step,
    trainable_values,
)


# ------------------------------------------------------------- mixing weights
@pytest.mark.parametrize(
    "options",
    [
        {"normalization": "none"},  # the weights are max(u, 0) themselves
        {"normalization": "per_layer"},
        {"granularity": "stream"},
    ],
    ids=["normalization_none", "normalization_per_layer", "granularity_stream"],
)
@pytest.mark.parametrize("mode", MODES)
def test_lookahead_rule_equals_closed_form(mode, options):
    """Three streams (two on h_T, one with its own head): same weights, same step."""
    sources = (TARGET_CLASSES, TARGET_CLASSES, OTHER_CLASSES)
    closed_form = make_model(sources, rule="closed_form", **options)
    lookahead = copy_of(closed_form, rule="lookahead", **options)
    batch = random_batch(sources)
    closed_logs = train_step(closed_form, batch, mode)
    lookahead_logs = train_step(lookahead, batch, mode)
    assert closed_form.mixing_weights.shape == (3, 3)  # [S, L]
    np.testing.assert_allclose(
        lookahead.mixing_weights, closed_form.mixing_weights, rtol=1e-4, atol=1e-6
    )
    assert float(tf.reduce_max(closed_form.mixing_weights)) > 0.0
    assert_logs_close(lookahead_logs, closed_logs, rtol=1e-4, atol=1e-6)
    for after_lookahead, after_closed_form in zip(
        trainable_values(lookahead), trainable_values(closed_form)
    ):
        np.testing.assert_allclose(after_lookahead, after_closed_form, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rule", ["closed_form", "lookahead"])
@pytest.mark.parametrize("mode", MODES)
def test_anti_aligned_source_gets_zero_weight_in_every_layer(mode, rule):
    """Source 1 is the target batch; source 2 the same image with the other label.

    With one example and two classes, dL/dlogits = (p - e_y) = delta * (1, -1)
    and flipping y flips the sign of delta, so g_2 = c * g_T with c < 0 in every
    layer, while g_1 = g_T.
    """
    binary = ("negative", "positive")
    model = make_model(
        (binary, binary),
        target_class_names=binary,
        source_names=("aligned", "flipped"),
        normalization="none",  # w = max(u, 0): u itself where positive
        rule=rule,
    )
    x = images(np.random.default_rng(3), count=1)
    y = tf.constant([1], tf.int32)
    batch = {"sources": ((x, y), (x, 1 - y)), "target": (x, y)}
    logs = train_step(model, batch, mode)
    aligned, flipped = model.mixing_weights.numpy()
    assert np.min(aligned) > 0.0  # u = |g_T,l|^2 > 0 in every layer
    np.testing.assert_array_equal(flipped, np.zeros(len(model.mixing_layer_names)))
    assert logs["mixing_weight/flipped"] == 0.0
    np.testing.assert_allclose(logs["loss/aligned"], logs["loss/target"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "weight_total, expected",
    [
        pytest.param(1.0, 0.5, id="one"),  # two copies of the target batch share each layer
        pytest.param("num_streams", 1.0, id="num_streams"),  # ... or each gets 1, as in joint
    ],
)
def test_copies_of_the_target_share_the_weight(weight_total, expected):
    model = make_model((TARGET_CLASSES, TARGET_CLASSES), weight_total=weight_total)
    batch = random_batch(())
    batch["sources"] = (batch["target"], batch["target"])
    train_step(model, batch)
    np.testing.assert_allclose(
        model.mixing_weights, np.full([2, 3], expected), rtol=1e-6, atol=1e-6
    )


def test_uniform_mixing_gives_weight_one():
    sources = (TARGET_CLASSES, OTHER_CLASSES)
    model = make_model(sources, rule="uniform")
    logs = train_step(model, random_batch(sources))
    np.testing.assert_array_equal(model.mixing_weights, np.ones([2, 3]))
    assert logs["mixing_weight/source_2"] == 1.0


def test_logs_and_state_names():
    sources = (TARGET_CLASSES, OTHER_CLASSES)
    model = make_model(sources, source_names=("svhn", "usps"), num_unlabelled=6)
    logs = train_step(model, random_batch(sources, num_unlabelled=6))
    assert model.stream_names == ("svhn", "usps", "pseudo_labels")
    assert model.mixing_layer_names == (
        "gradmix/trunk/conv",
        "gradmix/trunk/dense",
        "gradmix/head_target",
    )
    assert model.mixing_weights.shape == (3, 3)
    stream_keys = {
        f"{kind}/{name}" for kind in ("loss", "mixing_weight") for name in model.stream_names
    }
    assert set(logs) == (
        stream_keys
        | {"loss", "loss/target", "rho", "learning_rate_ratio"}
        | {"pseudo_labels/acceptance", "pseudo_labels/precision"}
    )
    probabilities = model(random_batch(())["target"][0])
    np.testing.assert_allclose(
        tf.reduce_sum(probabilities, axis=1), np.ones(4), rtol=1e-6, atol=1e-6
    )


# ----------------------------------------------------------------- plain step
@pytest.mark.parametrize("source_classes", [TARGET_CLASSES, OTHER_CLASSES])
@pytest.mark.parametrize("mode", MODES)
def test_single_uniform_stream_is_a_plain_sgd_step(mode, source_classes):
    """K = 1, w = 1, lambda_T = 0, r_t = 1: GradMix is SGD on the source's loss."""
    model = make_model(
        (source_classes,), rule="uniform", target_weight=0.0, adaptive_learning_rate=False
    )
    manual = copy_of(model, rule="uniform", target_weight=0.0, adaptive_learning_rate=False)
    batch = random_batch((source_classes,))
    train_step(model, batch, mode)

    x, y = batch["sources"][0]
    head = manual.heads[0] if source_classes == TARGET_CLASSES else manual.heads[1]
    variables = manual.trunk.trainable_variables + head.trainable_variables
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(cross_entropy(head(manual.trunk(x, training=True)), y))
    for variable, gradient in zip(variables, tape.gradient(loss, variables)):
        variable.assign(variable - LEARNING_RATE * gradient)

    for expected, got in zip(manual.trainable_variables, model.trainable_variables):
        assert expected.path == got.path
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7, err_msg=got.path)
    if source_classes == OTHER_CLASSES:  # h_T has no gradient at all: it does not move
        np.testing.assert_array_equal(model.heads[0].kernel, manual.heads[0].kernel)


def test_target_only_is_a_plain_sgd_step():
    """No source, no P (the target-only baseline): SGD on the labelled target loss."""
    model = make_model((), adaptive_learning_rate=False)
    manual = copy_of(model, adaptive_learning_rate=False)
    batch = random_batch(())
    logs = train_step(model, batch)
    assert model.mixing_weights.shape == (0, 3)
    np.testing.assert_allclose(logs["rho"], 1.0, rtol=1e-6, atol=1e-6)  # G = g_T

    x, y = batch["target"]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(cross_entropy(manual.heads[0](manual.trunk(x, training=True)), y))
    gradients = tape.gradient(loss, manual.trainable_variables)
    for variable, gradient in zip(manual.trainable_variables, gradients):
        variable.assign(variable - LEARNING_RATE * gradient)
    np.testing.assert_allclose(logs["loss/target"], loss, rtol=1e-6, atol=1e-6)
    for got, expected in zip(model.trainable_variables, manual.trainable_variables):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7, err_msg=got.path)


# ----------------------------------------------------- adaptive learning rate
@pytest.mark.parametrize(
    "make_optimizer",
    [
        pytest.param(lambda: keras.optimizers.SGD(LEARNING_RATE), id="sgd"),
        pytest.param(lambda: keras.optimizers.SGD(LEARNING_RATE, momentum=0.9), id="sgd_momentum"),
        pytest.param(lambda: keras.optimizers.Adam(1e-3), id="adam"),
    ],
)
def test_ratio_scales_the_real_step(make_optimizer):
    """r_t = 1, 2, 1/2 -> the first step's change of every variable is 1, 2, 1/2 times.

    r_t is forced through the running mean: with many past steps (no bias
    correction left) and a tiny (huge) mean, rho_t / mean is clipped to r_max (r_min).
    Adam's first step is lr * m / (sqrt(v) + eps), linear in lr, so it doubles too.
    """
    sources = (TARGET_CLASSES, OTHER_CLASSES)
    batch = random_batch(sources)
    plain = make_model(sources, optimizer=make_optimizer(), adaptive_learning_rate=False)
    initial = trainable_values(plain)
    adaptive = {
        ratio: copy_of(plain, optimizer=make_optimizer(), r_min=0.5, r_max=2.0)
        for ratio in (1.0, 2.0, 0.5)
    }
    adaptive[2.0].rho_steps.assign(1e4)
    adaptive[2.0].rho_ema.assign(1e-9)  # rho_t / mean ~ 100 -> r_max
    adaptive[0.5].rho_steps.assign(1e4)
    adaptive[0.5].rho_ema.assign(1e3)  # rho_t / mean ~ 1e-3 -> r_min
    train_step(plain, batch)
    plain_change = [after - before for after, before in zip(trainable_values(plain), initial)]

    for ratio, model in adaptive.items():
        logs = train_step(model, batch)
        np.testing.assert_allclose(logs["learning_rate_ratio"], ratio, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(
            model.optimizer.learning_rate,
            ratio * plain.optimizer.learning_rate,
            rtol=1e-6,
            atol=1e-6,
        )
        for after, before, reference in zip(trainable_values(model), initial, plain_change):
            np.testing.assert_allclose(after - before, ratio * reference, rtol=1e-4, atol=1e-7)


def test_ratio_follows_the_running_mean():
    """rho_1 gives r_1 = 1 (the mean is rho_1 itself); the EMA state advances by one."""
    sources = (TARGET_CLASSES,)
    model = make_model(sources)
    logs = train_step(model, random_batch(sources))
    np.testing.assert_allclose(logs["learning_rate_ratio"], 1.0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model.rho_steps, 1.0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model.rho_ema, 0.01 * logs["rho"], rtol=1e-6, atol=1e-6)
    assert 0.0 <= logs["rho"] <= 1.0


def test_learning_rate_is_schedule_times_ratio():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    model = make_model(optimizer=keras.optimizers.SGD(schedule))
    model.learning_rate_ratio.assign(2.0)
    learning_rate = model.optimizer.learning_rate
    np.testing.assert_allclose(learning_rate, 0.2, rtol=1e-6, atol=1e-6)  # 0.1 * 0.5^0 * 2
    model.optimizer.iterations.assign(2)
    learning_rate = model.optimizer.learning_rate
    np.testing.assert_allclose(learning_rate, 0.05, rtol=1e-6, atol=1e-6)  # 0.1 * 0.5^2 * 2
    model.compile(optimizer=model.optimizer)  # re-compiling keeps one ratio, not two
    learning_rate = model.optimizer.learning_rate  # a new optimizer: step 0
    np.testing.assert_allclose(learning_rate, 0.2, rtol=1e-6, atol=1e-6)
    model.learning_rate_ratio.assign(0.5)
    np.testing.assert_allclose(model.optimizer.learning_rate, 0.05, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------- saving
def test_save_and_load(tmp_path):
    sources = (TARGET_CLASSES, OTHER_CLASSES)
    model = make_model(sources, optimizer=keras.optimizers.Adam(1e-3), num_unlabelled=6)
    train_step(model, random_batch(sources, num_unlabelled=6))
    path = os.path.join(tmp_path, "gradmix.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)

    config, loaded_config = model.get_config(), loaded.get_config()
    assert config.pop("trunk")["class_name"] == loaded_config.pop("trunk")["class_name"]
    assert loaded_config == config
    for a, b in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(a, b, err_msg=a.path)
    x = random_batch(())["target"][0]
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6, atol=1e-6)
    # Compiled again, with the optimizer's state and a learning rate following r_t.
    assert int(loaded.optimizer.iterations) == 1
    loaded.learning_rate_ratio.assign(2.0)
    np.testing.assert_allclose(loaded.optimizer.learning_rate, 2e-3, rtol=1e-6, atol=1e-6)
    batch = random_batch(sources, seed=1, num_unlabelled=6)
    model.learning_rate_ratio.assign(2.0)
    assert_logs_close(train_step(loaded, batch), train_step(model, batch))
    for a, b in zip(loaded.weights, model.weights):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=a.path)


# --------------------------------------------------------------- pseudo label
def test_empty_table_gives_zero_loss_and_weight():
    """No accepted pseudo-label: P adds nothing, the step is the step without P."""
    sources = (TARGET_CLASSES,)
    model = make_model(sources, num_unlabelled=6)
    without_p = make_model(sources)
    for twin, original in zip(without_p.trainable_variables, model.trainable_variables):
        twin.assign(original)
    batch = random_batch(sources, num_unlabelled=6)
    logs = train_step(model, batch)
    del batch["unlabelled"]
    train_step(without_p, batch)
    assert logs["loss/pseudo_labels"] == 0.0
    assert logs["mixing_weight/pseudo_labels"] == 0.0
    np.testing.assert_array_equal(model.mixing_weights[1], np.zeros(3))
    np.testing.assert_allclose(
        model.mixing_weights[:1], without_p.mixing_weights, rtol=1e-6, atol=1e-6
    )
    for got, expected in zip(model.trainable_variables, without_p.trainable_variables):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6, err_msg=got.path)


@pytest.mark.parametrize("confidence_weights", [True, False])
def test_ids_select_the_stored_labels(confidence_weights):
    model = make_model((), num_unlabelled=6, pseudo_label_confidence_weights=confidence_weights)
    model.pseudo_labels.assign([2, 0, 1, 1, 0, 2])
    model.pseudo_label_weights.assign([0.9, 0.0, 0.5, 1.0, 0.0, 0.6])  # ids 1, 4 rejected
    ids = tf.constant([3, 1, 0, 5], tf.int32)
    x = images(np.random.default_rng(4))

    batch = model._stream_batches({"sources": (), "target": (x, ids), "unlabelled": (x, ids)})
    pseudo_labelled = batch[0][0]
    stored, example_weights = pseudo_labelled.labels, pseudo_labelled.example_weights
    accepted = pseudo_labelled.accepted
    np.testing.assert_array_equal(stored, [1, 0, 2, 2])
    np.testing.assert_array_equal(accepted, [1.0, 0.0, 1.0, 1.0])
    expected_weights = [1.0, 0.0, 0.9, 0.6] if confidence_weights else [1.0, 0.0, 1.0, 1.0]
    np.testing.assert_allclose(example_weights, expected_weights, rtol=1e-6, atol=1e-6)

    # The loss of P: sum of weight * cross-entropy with the stored label / #accepted.
    per_example = cross_entropy(model.heads[0](model.trunk(x, training=True)), stored)
    expected_loss = tf.reduce_sum(expected_weights * per_example) / 3.0
    batch = {"sources": (), "target": random_batch(())["target"], "unlabelled": (x, ids)}
    logs = train_step(model, batch)
    np.testing.assert_allclose(logs["loss/pseudo_labels"], expected_loss, rtol=1e-6, atol=1e-6)


def digits_like_data(seed: int) -> MultiStreamData:
    """One 2-class source and a 3-class target (2 shots a class, 18 unlabelled)."""
    rng = np.random.default_rng(0)

    def pictures(count):
        return rng.random((count, *IMAGE_SHAPE), np.float32)  # in [0, 1], the contract

    source = LabelledStream.from_arrays("source", pictures(16), np.arange(16) % 2, OTHER_CLASSES)
    target = TargetSplit.from_arrays(
        pictures(24),
        np.arange(24) % 3,
        pictures(6),
        np.arange(6) % 3,
        TARGET_CLASSES,
        shots_per_class=2,
        seed=seed,
    )
    return MultiStreamData([source], target)


# ---------------------------------------------------------------- determinism
def test_same_seed_same_weights_after_fit():
    def fit(seed):
        data = digits_like_data(seed)
        num_unlabelled = data.target.unlabelled.size
        model = make_model((OTHER_CLASSES,), seed=seed, num_unlabelled=num_unlabelled)
        model.pseudo_label_weights.assign(np.full(num_unlabelled, 0.8, np.float32))
        model.fit(
            data.train_dataset(4, seed=seed),
            steps_per_epoch=3,
            epochs=2,
            verbose=0,
            shuffle=False,
        )
        return model

    first, second = fit(0), fit(0)
    assert int(first.optimizer.iterations) == 6
    for a, b in zip(first.weights, second.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(a, b, err_msg=a.path)
    initial = make_model((OTHER_CLASSES,), seed=0).trunk.get_weights()
    # It did train.
    assert not np.allclose(first.trunk.get_weights()[0], initial[0], rtol=1e-6, atol=1e-6)


# -------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "options, message",
    [
        pytest.param({"rule": "joint"}, "rule must be one of", id="rule"),
        pytest.param({"alignment": "sine"}, "alignment must be one of", id="alignment"),
        pytest.param({"granularity": "variable"}, "granularity must be one of", id="granularity"),
        pytest.param(
            {"normalization": "softmax"}, "normalization must be one of", id="normalization"
        ),
        pytest.param(
            {"rule": "lookahead", "alignment": "cosine"},
            "use alignment='dot'",
            id="lookahead_cosine",
        ),
        pytest.param(
            {"source_names": ("a", "b")}, "2 source names for 1 sources", id="source_names"
        ),
        pytest.param({"r_min": 0.0}, "r_min", id="r_min"),
        pytest.param({"r_max": 0.9}, "r_max", id="r_max"),
        pytest.param({"weight_total": "all"}, "weight_total", id="weight_total_name"),
        pytest.param({"weight_total": -1.0}, "weight_total", id="weight_total_negative"),
        pytest.param({"rho_decay": 1.0}, "rho_decay", id="rho_decay"),
        pytest.param({"num_unlabelled": -3}, "num_unlabelled", id="num_unlabelled"),
        pytest.param({"lookahead_step_size": 0.0}, "lookahead_step_size", id="lookahead_step_size"),
    ],
)
def test_bad_option_raises(options, message):
    with pytest.raises(ValueError, match=message):
        GradMixModel(tiny_trunk(), TARGET_CLASSES, [OTHER_CLASSES], **options)
