"""Tests of the experiment wiring (`gradmix_tf.experiment`) on the smoke digits config."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import digits as digits_config
from gradmix_tf import experiment
from gradmix_tf.data.streams import DataError
from gradmix_tf.tasks import digits
from gradmix_tf.training.gradmix_model import PSEUDO_LABEL_STREAM

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_PER_CLASS = 20  # configs/digits.py:smoke's data.max_per_class
SMOKE_SHOTS = 5  # configs/digits.py:smoke's data.shots_per_class


def smoke_config(method: str = "gradmix"):
    config = digits_config.get_config("smoke")
    config.method = method
    return config


# ------------------------------------------------------------- resolve config
def test_gradmix_keeps_the_config():
    config = smoke_config("gradmix")
    assert experiment.resolve_config(config).to_dict() == config.to_dict()


def test_joint_mixes_uniformly():
    resolved = experiment.resolve_config(smoke_config("joint"))
    assert resolved.step.rule == "uniform"
    assert not resolved.step.adaptive_learning_rate
    assert not resolved.pseudo_labels.enabled
    assert resolved.data.use_sources
    assert resolved.data.shots_per_class == SMOKE_SHOTS


def test_target_only_drops_the_sources():
    resolved = experiment.resolve_config(smoke_config("target_only"))
    assert not resolved.data.use_sources
    assert not resolved.pseudo_labels.enabled
    assert resolved.data.shots_per_class == SMOKE_SHOTS


def test_oracle_labels_the_whole_pool():
    resolved = experiment.resolve_config(smoke_config("oracle"))
    assert not resolved.data.use_sources
    assert resolved.data.shots_per_class == 0
    assert not resolved.pseudo_labels.enabled


def test_returns_a_copy():
    config = smoke_config("oracle")
    experiment.resolve_config(config)
    assert config.data.use_sources
    assert config.data.shots_per_class == SMOKE_SHOTS


def test_unknown_method_raises():
    with pytest.raises(ValueError, match="unknown method 'gradmixx'; known methods: .*joint"):
        experiment.resolve_config(smoke_config("gradmixx"))


def test_unknown_trunk_raises():
    config = smoke_config()
    config.model.trunk = "resnet"
    with pytest.raises(ValueError, match="unknown trunk 'resnet'; known trunks: .*small_cnn"):
        experiment.resolve_config(config)


@pytest.mark.parametrize("value", (0, -1))
@pytest.mark.parametrize(
    "field", ("batch_size", "steps", "steps_per_epoch", "checkpoint_every_steps")
)
def test_non_positive_train_fields_raise(field, value):
    config = smoke_config()
    config.train[field] = value
    with pytest.raises(ValueError, match=f"train.{field} must be positive, got {value}"):
        experiment.resolve_config(config)


def test_negative_shots_raise():
    config = smoke_config()
    config.data.shots_per_class = -1
    with pytest.raises(ValueError, match="shots_per_class must be >= 0"):
        experiment.resolve_config(config)


# --------------------------- build_data / build_model (20 images a class in every part)
def build_data(method):
    return experiment.build_data(experiment.resolve_config(smoke_config(method)))


def test_gradmix_data():
    data = build_data("gradmix")
    assert [s.name for s in data.sources] == list(digits.SOURCE_STREAMS)
    assert data.target.labelled.size == 10 * SMOKE_SHOTS
    assert data.target.unlabelled.size == 10 * (SMOKE_PER_CLASS - SMOKE_SHOTS)
    assert data.target.test.size == 10 * SMOKE_PER_CLASS


def test_target_only_has_no_sources():
    data = build_data("target_only")
    assert data.sources == []
    assert data.target.labelled.size == 10 * SMOKE_SHOTS
    assert data.target.unlabelled is not None
    assert data.train_dataset(4, seed=0).element_spec["sources"] == ()


def test_oracle_has_no_unlabelled_set():
    data = build_data("oracle")
    assert data.sources == []
    assert data.target.unlabelled is None
    assert data.target.labelled.size == 10 * SMOKE_PER_CLASS


def test_gradmix_model_is_compiled_with_matching_streams():
    config = experiment.resolve_config(smoke_config("gradmix"))
    data = experiment.build_data(config)
    model = experiment.build_model(config, data)
    assert model.built
    assert model.compiled
    assert model.optimizer.built
    assert model.stream_names == (*[s.name for s in data.sources], PSEUDO_LABEL_STREAM)
    assert model.num_unlabelled == data.target.unlabelled.size
    assert model.target_class_names == data.target_class_names
    assert model.mixing_weights.shape[0] == len(model.stream_names)
    probabilities = model.predict(np.zeros((2, *digits.IMAGE_SHAPE), np.float32), verbose=0)
    assert probabilities.shape == (2, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), [1.0, 1.0], rtol=1e-6, atol=1e-5)


def test_joint_model_mixes_uniformly_without_pseudo_labels():
    config = experiment.resolve_config(smoke_config("joint"))
    data = experiment.build_data(config)
    model = experiment.build_model(config, data)
    assert model.options.rule == "uniform"
    assert model.stream_names == digits.SOURCE_STREAMS
    assert model.num_unlabelled == 0


def test_target_only_model_has_no_streams():
    config = experiment.resolve_config(smoke_config("target_only"))
    model = experiment.build_model(config, experiment.build_data(config))
    assert model.stream_names == ()
    assert model.mixing_weights.shape[0] == 0


@pytest.mark.slow  # a fresh process (launch.train's representative test is in test_launchers)
def test_config_typo_fails_fast_and_names_the_field(tmp_path):
    """`--config.train.stepz=3` is rejected by the flag parser, before any work is done."""
    workdir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = time.monotonic()
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.train",
            "--config=configs/digits.py:smoke",
            f"--workdir={workdir}",
            "--config.train.stepz=3",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2, output
    assert completed.stderr == (
        "error: --config.train.stepz: the config has no field train.stepz (did you mean "
        "train.steps?); the config file lists every field.\n"
    ), output
    assert not workdir.exists()  # nothing was written
    assert elapsed < 30, f"the typo took {elapsed:.1f} s to be reported"


def test_drop_sources_leaves_one_source_out():
    """A leave-one-source-out ablation: the named source is gone, the rest is the same."""
    config = digits_config.get_config("smoke")
    full = experiment.build_data(experiment.resolve_config(config))
    config.data.drop_sources = (digits.SOURCE_UCI_STREAM,)
    ablated = experiment.build_data(experiment.resolve_config(config))
    assert [s.name for s in ablated.sources] == [digits.SOURCE_MNIST_STREAM]
    assert ablated.sources[0].size == full.sources[0].size
    assert ablated.target.labelled.size == full.target.labelled.size
    config.data.drop_sources = ("usps_5_9",)
    with pytest.raises(DataError, match=r"drop_sources names \['usps_5_9'\].*mnist_0_4"):
        experiment.build_data(experiment.resolve_config(config))
