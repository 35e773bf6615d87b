"""Distributed GradMix: one replica and two replicas train the same model.

Two replicas are a MirroredStrategy on the two logical CPU devices that
tests/conftest.py configures before TensorFlow runs any op (the `two_replicas`
fixture). The other tests cover the strategy factory, the chief and the options.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf import distribute
from tests.model_testing import OTHER_CLASSES, TARGET_CLASSES, make_model, random_batch

SOURCES = (TARGET_CLASSES, OTHER_CLASSES)  # one source on h_T, one with a head of its own
NUM_UNLABELLED = 16
GLOBAL_BATCH = 8
STEPS = 4


def _dataset() -> tf.data.Dataset:
    """STEPS global batches of GLOBAL_BATCH examples a stream, in a fixed order."""
    batches = [
        random_batch(SOURCES, seed=i, count=GLOBAL_BATCH, num_unlabelled=NUM_UNLABELLED)
        for i in range(STEPS)
    ]
    stacked = tf.nest.map_structure(lambda *parts: tf.stack(parts), *batches)
    return tf.data.Dataset.from_tensor_slices(stacked).unbatch().batch(GLOBAL_BATCH)


class _RecordMixingWeights(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = []

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append(self.model.mixing_weights.numpy())


def fit_under(strategy, mixing: str) -> dict:
    """Trains STEPS steps under `strategy`; returns the mixing weights of every
    step and every trainable variable (each replica's copy must agree)."""
    options = {"rule": mixing, "adaptive_learning_rate": mixing == "closed_form"}
    if mixing == "persistent_recompute":  # each stream's gradient taken twice
        options.update(rule="persistent", gradient_memory="recompute")
    if mixing == "persistent_adapter":  # the source on h_T through a label adapter
        options.update(rule="persistent", label_adapter=True)
    if options["rule"] == "persistent":  # its step size is for cosines
        options["alignment"] = "cosine"
    with strategy.scope():
        model = make_model(
            SOURCES,
            optimizer=keras.optimizers.Adam(1e-2),
            num_unlabelled=NUM_UNLABELLED,
            **options,
        )
    # Pseudo-labels for half of T_u (the others weigh 0), as a refresh leaves them.
    rng = np.random.default_rng(0)
    model.pseudo_labels.assign(rng.integers(0, len(TARGET_CLASSES), NUM_UNLABELLED))
    model.pseudo_label_weights.assign(np.where(np.arange(NUM_UNLABELLED) % 2, 0.0, 0.9))
    record = _RecordMixingWeights()
    model.fit(_dataset(), epochs=1, verbose=0, shuffle=False, callbacks=[record])
    variables = {}
    for variable in model.trainable_variables:
        value = variable.value
        copies = [v.numpy() for v in getattr(value, "values", [value])]
        for copy in copies[1:]:
            np.testing.assert_array_equal(copy, copies[0], err_msg=variable.path)
        variables[variable.path] = copies[0]
    return {
        "mixing_weights": np.stack(record.weights),
        "variables": variables,
        "replicas": strategy.num_replicas_in_sync,
        "steps": int(model.optimizer.iterations.numpy()),
    }


def initial_variables() -> dict:
    model = make_model(SOURCES, num_unlabelled=NUM_UNLABELLED)
    return {v.path: v.numpy() for v in model.trainable_variables}


@pytest.mark.parametrize(
    "mixing",
    [
        "closed_form",
        "uniform",
        "pcgrad",
        "persistent",
        "persistent_recompute",
        "persistent_adapter",
    ],
)
def test_one_and_two_replicas_train_the_same_model(two_replicas, mixing):
    """Same global batch and seed: the same mixing weights at every step and the same
    variables after 4 steps, for GradMix, joint training (uniform) and PCGrad (run on the
    Gram matrix of the global gradients; example reweighting is one-device only)."""
    one = fit_under(tf.distribute.get_strategy(), mixing)
    two = fit_under(two_replicas, mixing)
    assert (one["replicas"], two["replicas"]) == (1, 2)
    assert one["steps"] == two["steps"] == STEPS
    assert one["mixing_weights"].shape == (STEPS, 3, 3)
    if mixing == "closed_form":  # the closed form weights something else than 1 and 0
        assert 0.05 < one["mixing_weights"].std(), one["mixing_weights"]
    if mixing.startswith("persistent"):  # the weights moved from 1, the same on both
        assert 1e-3 < np.abs(one["mixing_weights"][-1] - 1.0).max(), one["mixing_weights"]
    np.testing.assert_allclose(two["mixing_weights"], one["mixing_weights"], atol=1e-5)
    assert one["variables"].keys() == two["variables"].keys()
    for path, value in one["variables"].items():
        np.testing.assert_allclose(two["variables"][path], value, atol=1e-5, err_msg=path)
    initial = initial_variables()  # the variables of the model without label adapters
    moved = max(np.abs(v - initial[p]).max() for p, v in one["variables"].items() if p in initial)
    assert moved > 1e-3, moved  # training changed the weights


# ----------------------------------------------------------------- in-process
def test_make_strategy():
    assert distribute.make_strategy("none") is tf.distribute.get_strategy()
    mirrored = distribute.make_strategy("mirrored", devices=["/cpu:0"])
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync == 1
    # Without devices: every local device, here the two logical CPUs of tests/conftest.py.
    assert distribute.make_strategy("mirrored").num_replicas_in_sync == 2
    assert distribute.is_chief(mirrored) and distribute.is_chief()
    with pytest.raises(ValueError, match="distribute must be one of"):
        distribute.make_strategy("horovod")


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.make_strategy("multi_worker")


def test_jit_compile_option():
    assert distribute.jit_compile_option("auto") == "auto"
    assert distribute.jit_compile_option("on") is True
    assert distribute.jit_compile_option("off") is False
    with pytest.raises(ValueError, match="'auto', 'on' or 'off'"):
        distribute.jit_compile_option("yes")


def test_precision_policy_is_scoped():
    with distribute.precision_policy("mixed_bfloat16"):
        layer = keras.layers.Dense(2)
    assert layer.dtype_policy.name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32"
    with pytest.raises(ValueError, match="train.precision must be one of"):
        with distribute.precision_policy("float8"):
            pass


def test_worker_directory_is_private_and_removed(tmp_path):
    workdir = str(tmp_path / "run")
    private = distribute.worker_directory(workdir)
    assert os.path.isdir(private) and not private.startswith(workdir)
    distribute.remove_worker_directory(workdir, private)
    assert not os.path.exists(private)
    os.makedirs(workdir)
    distribute.remove_worker_directory(workdir, workdir)  # never the chief's
    assert os.path.isdir(workdir)
