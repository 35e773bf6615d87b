"""Mixed precision: half-precision compute, float32 variables and mixing weights, no NaN."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf import distribute
from tests.model_testing import OTHER_CLASSES, TARGET_CLASSES, make_model, random_batch

SOURCES = (TARGET_CLASSES, OTHER_CLASSES)


def model_under(precision: str, **options):
    with distribute.precision_policy(precision):
        return make_model(SOURCES, optimizer=keras.optimizers.Adam(1e-2), seed=5, **options)


# ------------------------------------------------------------ mixed precision
@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_steps_without_nan_and_weights_like_float32(precision):
    model = model_under(precision)
    reference = model_under("float32")
    assert model.trunk.layers[0].compute_dtype == precision.split("_")[1]
    loss_scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert loss_scaled == (precision == "mixed_float16")
    initial = [v.numpy() for v in reference.trainable_variables]
    step, reference_step = tf.function(model.train_step), tf.function(reference.train_step)
    for seed in range(3):
        logs = step(random_batch(SOURCES, seed=seed))
        reference_step(random_batch(SOURCES, seed=seed))
        assert all(np.isfinite(float(v)) for v in logs.values()), logs
        totals = tf.reduce_sum(model.mixing_weights, axis=0).numpy()  # per layer: 0 or 1
        np.testing.assert_allclose(totals, np.round(totals), rtol=1e-6, atol=1e-5)
        if seed == 0:  # from the same weights, the solve sees float32 training's gradients
            np.testing.assert_allclose(
                model.mixing_weights, reference.mixing_weights, rtol=1e-6, atol=0.05
            )
            assert float(tf.math.reduce_std(model.mixing_weights)) > 0.01
    assert int(model.optimizer.iterations.numpy()) == 3
    assert int(model.nonfinite_skipped.numpy()) == 0
    assert model.mixing_weights.dtype == "float32"
    for variable in model.trainable_variables:
        assert variable.dtype == "float32", variable.path
        assert np.isfinite(variable.numpy()).all(), variable.path
    # The updates are float32 training's, to half precision.
    updates = [
        (got.numpy() - start, expected.numpy() - start)
        for got, expected, start in zip(
            model.trainable_variables, reference.trainable_variables, initial
        )
    ]
    difference = np.sqrt(sum(((u - r) ** 2).sum() for u, r in updates))
    reference_norm = np.sqrt(sum((r**2).sum() for _, r in updates))
    assert difference < 0.3 * reference_norm


def test_loss_scale_overflow_halves_the_scale_and_skips():
    """An overflowing loss scale is not a NaN in the data: no error, even with "stop"."""
    model = model_under("mixed_float16", on_nonfinite="stop")
    before = [v.numpy() for v in model.trainable_variables]
    model.optimizer.dynamic_scale.assign(3e38)  # the scaled gradients overflow
    step = tf.function(model.train_step)
    step(random_batch(SOURCES))
    np.testing.assert_allclose(model.optimizer.dynamic_scale, 1.5e38, rtol=1e-6, atol=1e-6)
    assert int(model.optimizer.iterations.numpy()) == 0
    assert int(model.nonfinite_skipped.numpy()) == 1
    for variable, value in zip(model.trainable_variables, before):
        np.testing.assert_array_equal(variable, value)
    model.optimizer.dynamic_scale.assign(1024.0)
    step(random_batch(SOURCES, seed=1))
    assert int(model.optimizer.iterations.numpy()) == 1
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)


def test_a_nan_loss_still_stops():
    model = model_under("mixed_float16", on_nonfinite="stop")
    # A NaN in the target head makes the loss NaN whatever the CPU's half-precision
    # ReLU does with a NaN input (some give 0, and the loss stays finite).
    bias = model.heads[0].bias
    bias.assign(np.full(bias.shape, np.nan, np.float32))
    data = random_batch(SOURCES)
    with pytest.raises(tf.errors.InvalidArgumentError, match="stream\\(s\\) .*target"):
        tf.function(model.train_step)(data)


def test_recomputed_gradients_under_loss_scaling_equal_the_stored():
    """`gradient_memory="recompute"` under `mixed_float16`: the second passes scale and
    unscale their losses as the first do, so the step is the stored one's."""
    stored = model_under("mixed_float16")
    recomputed = model_under("mixed_float16", gradient_memory="recompute")
    for seed in range(2):
        tf.function(stored.train_step)(random_batch(SOURCES, seed=seed))
        tf.function(recomputed.train_step)(random_batch(SOURCES, seed=seed))
    np.testing.assert_allclose(recomputed.mixing_weights, stored.mixing_weights, atol=1e-5)
    for a, b in zip(stored.trainable_variables, recomputed.trainable_variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)
    assert int(recomputed.optimizer.iterations.numpy()) == 2
