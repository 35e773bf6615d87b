"""`launch.bench_step`: the joint-training reference is joint training, and the table is printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from configs import digits as digits_config
from gradmix_tf import experiment
from gradmix_tf.data.streams import LabelledStream, MultiStreamData, TargetSplit
from launch import bench_step

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config():
    config = digits_config.get_config("smoke")
    config.optimizer.name = "sgd"
    config.optimizer.momentum = 0.0
    config.optimizer.learning_rate = 0.1
    config.train.batch_size = 4
    config.data.max_shift = 0
    return experiment.resolve_config(config)


def tiny_data() -> MultiStreamData:
    rng = np.random.default_rng(0)

    def stream(name, classes):
        images = rng.uniform(size=(12, 8, 8, 3)).astype(np.float32)
        return LabelledStream.from_arrays(name, images, rng.integers(0, len(classes), 12), classes)

    target = TargetSplit.from_arrays(
        rng.uniform(size=(30, 8, 8, 3)).astype(np.float32),
        np.arange(30) % 3,
        rng.uniform(size=(6, 8, 8, 3)).astype(np.float32),
        np.arange(6) % 3,
        ("a", "b", "c"),
        shots_per_class=2,
        seed=0,
    )
    return MultiStreamData([stream("s1", ("x", "y")), stream("s2", ("a", "b", "c"))], target)


def test_joint_reference_is_the_uniform_step():
    """One pass on the concatenated batch (each stream through its head) is the
    step of joint training: with SGD it equals GradMix's `rule="uniform"`
    step without adaptive learning rate (every weight 1, lambda_T = 1)."""
    config, data = tiny_config(), tiny_data()
    batches = bench_step.make_batches(config, data, num_sources=3, count=2)
    assert len(batches) == 2 and len(batches[0]["sources"]) == 3
    # Source 3 reads source 1's batches (k mod K0), with its label space.
    np.testing.assert_array_equal(batches[0]["sources"][2][0], batches[0]["sources"][0][0])
    keras.utils.set_random_seed(0)
    options = {"rule": "uniform", "adaptive_learning_rate": False}
    joint = bench_step.make_model(config, data, 3, **options)
    uniform = bench_step.make_model(config, data, 3, **options)
    uniform.set_weights(joint.get_weights())
    joint_step = tf.function(bench_step.joint_step_function(joint))
    uniform_step = tf.function(uniform.train_step)
    initial = joint.get_weights()[0]
    for batch in batches:
        joint_loss = joint_step(batch)["loss"]
        logs = uniform_step(batch)
        streams = [logs[f"loss/source_{k}"] for k in (1, 2, 3)] + [logs["loss/target"]]
        np.testing.assert_allclose(joint_loss, sum(streams), rtol=1e-5)
    for got, expected in zip(joint.trainable_variables, uniform.trainable_variables):
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=got.path)
    assert np.abs(joint.get_weights()[0] - initial).max() > 1e-4


@pytest.mark.parametrize(
    "jit", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["graph", "xla"]
)
def test_benchmark_times_every_method(monkeypatch, jit):
    """Every method's step runs, traced as `fit` traces it, and compiled with XLA
    (`--jit_step`), where the steps skip a non-finite batch instead of asserting."""
    monkeypatch.setattr(experiment, "build_data", lambda config: tiny_data())
    table, gradient_mib = bench_step.benchmark(
        tiny_config(), num_sources=2, repeats=2, steps=2, warmup=1, jit=jit
    )
    assert set(table) == set(bench_step.METHODS)
    for ms, per_second, peak, trace in table.values():
        assert ms > 0 and per_second > 0 and trace > 0
        np.testing.assert_allclose(per_second, 3 * 4 * 1000.0 / ms, rtol=1e-6)  # (K+1) * B
        assert peak is None or peak >= 0
    assert 0 < gradient_mib < 1
    row = bench_step.format_row(2, "gradmix", table["gradmix"], table["joint"][0])
    assert row.startswith("|  2 | gradmix ")


@pytest.mark.slow  # a fresh process: TensorFlow import, the digits task and 3 x 3 short runs
def test_command_prints_the_table_and_the_ratio():
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.bench_step",
            "--config=configs/digits.py:smoke",
            "--num_sources=1,2",
            "--repeats=1",
            "--steps=1",
            "--warmup=1",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    rows = [line for line in lines if re.match(r"\|\s+\d+ \| (gradmix|joint|uniform) ", line)]
    assert len(rows) == 6, result.stdout
    assert re.fullmatch(r"gradmix/joint step-time ratio \(K=2\): \d+\.\d\d", lines[-1]), lines[-1]
