"""Tests of `GradMixModel(on_nonfinite=...)`: a NaN/Inf loss or gradient stops or skips a step."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf.training.gradmix_model import GradMixModel
from tests import model_testing as testing

SOURCES = (
    testing.TARGET_CLASSES,
    testing.OTHER_CLASSES,
)  # "svhn" shares h_T, "usps" has a head of its own
SOURCE_NAMES = ("svhn", "usps")
NUM_UNLABELLED = 6


def nonfinite_model(on_nonfinite="stop", light=False) -> GradMixModel:
    """Two sources and P, Adam (slots to spoil), adaptive learning rate; `light`: no P, SGD."""
    return testing.make_model(
        SOURCES,
        source_names=SOURCE_NAMES,
        num_unlabelled=0 if light else NUM_UNLABELLED,
        optimizer=keras.optimizers.SGD(testing.LEARNING_RATE)
        if light
        else keras.optimizers.Adam(1e-2),
        on_nonfinite=on_nonfinite,
    )


def batch(seed=0) -> dict:
    return testing.random_batch(SOURCES, seed=seed, num_unlabelled=NUM_UNLABELLED)


def with_nonfinite(batch: dict, stream: str, value=np.nan, example=0) -> dict:
    """`batch` with one pixel of `stream`'s `example` set to `value` (NaN or Inf)."""

    def spoil(images):
        return tf.tensor_scatter_nd_update(images, [[example, 1, 1, 0]], [value])

    batch = dict(batch)
    if stream == "target":
        x, y = batch["target"]
        batch["target"] = (spoil(x), y)
    elif stream == "pseudo_labels":
        x, ids = batch["unlabelled"]
        batch["unlabelled"] = (spoil(x), ids)
    else:
        k = SOURCE_NAMES.index(stream)
        sources = list(batch["sources"])
        sources[k] = (spoil(sources[k][0]), sources[k][1])
        batch["sources"] = tuple(sources)
    return batch


def state_of(model) -> list[tuple[str, np.ndarray]]:
    """Every variable a step may change: weights, GradMix state, optimizer slots and step
    (paths without their first part, which differs between two optimizers)."""
    variables = model.weights + model.optimizer.variables
    return [(v.path.split("/", 1)[-1], v.numpy()) for v in variables]


def stepper(model, mode):
    """`train_step`, eagerly or traced once (as `fit` runs it); it returns the logs as floats."""
    step = model.train_step if mode == "eager" else tf.function(model.train_step)
    return lambda batch: {name: float(value) for name, value in step(batch).items()}


def assert_same_state(got, expected, skipped_changes=0):
    """All variables equal, but for `nonfinite_skipped` having grown by `skipped_changes`."""
    assert [path for path, _ in got] == [path for path, _ in expected]
    for (path, after), (_, before) in zip(got, expected):
        if path.endswith("nonfinite_skipped"):
            assert int(after) == int(before) + skipped_changes
        else:
            np.testing.assert_array_equal(after, before, err_msg=path)


# ----------------------------------------------------------------------- stop
@pytest.mark.parametrize(
    "stream_and_value",
    [("usps", np.nan), ("target", np.inf), ("pseudo_labels", np.nan)],
    ids=["usps_nan", "target_inf", "pseudo_labels_nan"],
)
@pytest.mark.parametrize("mode", testing.MODES)
def test_raises_naming_the_stream_and_the_step(mode, stream_and_value):
    stream, value = stream_and_value
    model = nonfinite_model("stop")
    step = stepper(model, mode)
    step(batch(seed=1))  # a good step 1: the bad one is step 2
    before = state_of(model)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=rf"stream\(s\) {stream} at training step 2 \(1-based: optimizer.iterations \+ 1\)"
        r".*Lower the learning rate.*on_nonfinite=skip",
    ):
        step(with_nonfinite(batch(), stream, value))
    assert_same_state(state_of(model), before)


def test_names_every_nonfinite_stream():
    model = nonfinite_model("stop")
    bad = with_nonfinite(with_nonfinite(batch(), "svhn"), "target", np.inf)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"stream\(s\) svhn, target at training step 1 "
    ):
        stepper(model, "eager")(bad)


def test_fit_raises_before_the_update():
    model = nonfinite_model("stop")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"usps at training step 2 "):
        fit_three_steps(model, bad_step=1)
    assert int(model.optimizer.iterations.numpy()) == 1
    assert all(np.isfinite(w).all() for w in model.get_weights())


# ----------------------------------------------------------------------- skip
@pytest.mark.parametrize("stream", ["svhn", "usps", "target"])
@pytest.mark.parametrize("mode", testing.MODES)
def test_skipped_batch_changes_nothing_and_the_next_one_trains(mode, stream):
    model, twin = nonfinite_model("skip"), nonfinite_model("skip")  # twin: no bad batch
    step, twin_step = stepper(model, mode), stepper(twin, mode)
    step(batch(seed=1))  # Adam's slots, rho's mean and w are now non-zero
    twin_step(batch(seed=1))
    before = state_of(model)
    assert_same_state(before, state_of(twin))

    logs = step(with_nonfinite(batch(), stream))
    assert logs["nonfinite_skipped"] == 1.0
    assert_same_state(state_of(model), before, skipped_changes=1)
    assert int(model.optimizer.iterations.numpy()) == 1

    logs = step(batch(seed=2))
    twin_logs = twin_step(batch(seed=2))
    assert logs.pop("nonfinite_skipped") == 1.0
    assert twin_logs.pop("nonfinite_skipped") == 0.0
    testing.assert_logs_close(logs, twin_logs)
    assert_same_state(state_of(model), state_of(twin), skipped_changes=1)
    assert int(model.optimizer.iterations.numpy()) == 2


def test_fit_skips_and_counts():
    model = nonfinite_model("skip")
    history = fit_three_steps(model, bad_step=1)
    assert int(model.optimizer.iterations.numpy()) == 2
    assert int(model.nonfinite_skipped.numpy()) == 1
    assert history.history["nonfinite_skipped"] == [1.0]
    assert all(np.isfinite(w).all() for w in model.get_weights())


@pytest.mark.parametrize(
    "on_nonfinite, expected",
    [
        pytest.param("skip", (2, 1, ""), id="skip"),
        pytest.param("stop", (1, 0, "usps at training step 2"), id="stop"),
    ],
)
def test_one_replica_mirrored_strategy(on_nonfinite, expected):
    """MirroredStrategy takes the cross-replica `tf.cond` path (merge_call)."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    assert fit_under(strategy, on_nonfinite) == expected


def test_xla_skips_when_it_cannot_stop():
    """XLA drops asserts: "stop" then skips (and counts) rather than failing to compile."""
    model = testing.make_model((testing.OTHER_CLASSES,), source_names=("usps",))
    model.compile(optimizer=keras.optimizers.SGD(testing.LEARNING_RATE), jit_compile=True)
    step = tf.function(model.train_step, jit_compile=True)
    data = testing.random_batch((testing.OTHER_CLASSES,))
    bad_source = tf.tensor_scatter_nd_update(data["sources"][0][0], [[0, 1, 1, 0]], [np.nan])
    logs = step({"sources": ((bad_source, data["sources"][0][1]),), "target": data["target"]})
    assert int(logs["nonfinite_skipped"]) == 1
    assert int(step(data)["nonfinite_skipped"]) == 1
    assert int(model.optimizer.iterations.numpy()) == 1


# ---------------------------------------------------------------- finite step
@pytest.mark.parametrize("on_nonfinite", ["stop", "skip"])
@pytest.mark.parametrize("mode", testing.MODES)
def test_finite_step_is_the_plain_sgd_step(mode, on_nonfinite):
    """K = 1, w = 1, lambda_T = 0, r_t = 1: GradMix is SGD on the source's loss."""
    options = {
        "rule": "uniform",
        "target_weight": 0.0,
        "adaptive_learning_rate": False,
        "on_nonfinite": on_nonfinite,
    }
    model = testing.make_model((testing.OTHER_CLASSES,), **options)
    manual = testing.copy_of(model, **options)
    data = testing.random_batch((testing.OTHER_CLASSES,))
    logs = stepper(model, mode)(data)
    assert ("nonfinite_skipped" in logs) == (on_nonfinite == "skip")
    assert logs.get("nonfinite_skipped", 0.0) == 0.0

    x, y = data["sources"][0]
    variables = manual.trunk.trainable_variables + manual.heads[1].trainable_variables
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(
            testing.cross_entropy(manual.heads[1](manual.trunk(x, training=True)), y)
        )
    for variable, gradient in zip(variables, tape.gradient(loss, variables)):
        variable.assign(variable - testing.LEARNING_RATE * gradient)
    for expected, got in zip(manual.trainable_variables, model.trainable_variables):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7, err_msg=got.path)
    assert int(model.optimizer.iterations.numpy()) == 1


# -------------------------------------------------------------------- options
def test_bad_value_raises():
    with pytest.raises(ValueError, match="on_nonfinite must be one of 'stop', 'skip'"):
        GradMixModel(
            testing.tiny_trunk(),
            testing.TARGET_CLASSES,
            [testing.OTHER_CLASSES],
            on_nonfinite="ignore",
        )


def test_config_and_state():
    model = nonfinite_model("skip")
    assert model.get_config()["on_nonfinite"] == "skip"
    clone = GradMixModel.from_config(model.get_config())
    assert clone.options.on_nonfinite == "skip"
    assert "gradmix/nonfinite_skipped" in [v.path for v in model.non_trainable_weights]


@pytest.mark.parametrize("order", ["compile_then_build", "build_then_compile"])
def test_optimizer_is_built_before_the_first_step(order):
    """The step applies the optimizer inside a `tf.cond`: it must exist by then."""
    model = GradMixModel(testing.tiny_trunk(), testing.TARGET_CLASSES, SOURCES, on_nonfinite="skip")
    steps = [
        lambda: model.build((None, *testing.IMAGE_SHAPE)),
        lambda: model.compile(optimizer=keras.optimizers.Adam(1e-3)),
    ]
    for step in steps if order == "build_then_compile" else steps[::-1]:
        step()
    assert model.optimizer.built
    data = testing.random_batch(SOURCES)
    step = stepper(model, "graph")
    step(with_nonfinite(data, "target"))
    step(data)
    assert int(model.optimizer.iterations.numpy()) == 1
    assert int(model.nonfinite_skipped.numpy()) == 1


def fit_three_steps(model, bad_step, bad_example=0):
    """`model.fit` over 3 batches of 4; batch `bad_step` has a NaN in source "usps"."""
    batches = [batch(seed=i) for i in range(3)]
    batches[bad_step] = with_nonfinite(batches[bad_step], "usps", example=bad_example)
    stacked = tf.nest.map_structure(lambda *parts: tf.stack(parts), *batches)
    dataset = tf.data.Dataset.from_tensor_slices(stacked).unbatch().batch(4)
    return model.fit(dataset, epochs=1, verbose=0)


def fit_under(strategy, on_nonfinite, bad_example=0):
    """(optimizer steps, skipped batches, "" or the error's stream and step) of a 3-step fit.

    Every replica's copy of every variable must stay finite and identical.
    """
    with strategy.scope():
        model = nonfinite_model(on_nonfinite, light=True)
    error = ""
    try:
        fit_three_steps(model, bad_step=1, bad_example=bad_example)
    except tf.errors.InvalidArgumentError as e:
        error = " ".join(str(e).split("stream(s) ")[1].split()[:5])
    for variable in model.weights + model.optimizer.variables:
        value = variable.value
        copies = [v.numpy() for v in getattr(value, "values", [value])]
        assert all(np.isfinite(c).all() for c in copies), variable.path
        assert all(np.array_equal(c, copies[0]) for c in copies), variable.path
    return int(model.optimizer.iterations.numpy()), int(model.nonfinite_skipped.numpy()), error


def test_two_replicas_take_the_same_decision(two_replicas):
    """A NaN on one replica stops or skips the step on both (the flag is all-reduced).

    Example 2 of a global batch of 4 is on replica 1 only: replica 0 sees finite data.
    """
    assert fit_under(two_replicas, "skip", bad_example=2) == (2, 1, "")
    assert fit_under(two_replicas, "stop", bad_example=2) == (1, 0, "usps at training step 2")
