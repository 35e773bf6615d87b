"""Exact resumption, atomic checkpoints and determinism of training.

In-process unit tests of `restore_latest`, `Checkpointer` and the step/epoch
arithmetic run on a tiny Keras model. The end-to-end tests (marked slow) run
`python -m launch.train` on the smoke digits config with dropout on (so the
seed generator state matters) and pseudo-labels on (refreshed every epoch):
a run killed with SIGKILL after its first checkpoint, a run whose newest
checkpoint is corrupt or half-written, and a second identical run must all
end with the weights and results of one uninterrupted run, bit for bit.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from configs import digits as digits_config
from gradmix_tf import experiment
from gradmix_tf.callbacks import checkpoints
from gradmix_tf.callbacks.checkpoints import Checkpointer, restore_latest
from gradmix_tf.data.streams import LabelledStream, MultiStreamData, TargetSplit

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_FLAGS = ("--config=configs/digits.py:smoke", "--config.model.dropout=0.25")
STEPS, STEPS_PER_EPOCH = 30, 10  # configs/digits.py:smoke; a checkpoint every epoch
NOT_TRAINING_STATE = {"_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE"}
SEED_STATE = "untracked_model_variables/0/.ATTRIBUTES/VARIABLE_VALUE"  # the dropout's
PSEUDO_LABELS = "model/pseudo_labels/.ATTRIBUTES/VARIABLE_VALUE"
ITERATIONS = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"


# ----------------------------------------------------------------- unit tests
def tiny_model(dropout: float = 0.0) -> keras.Model:
    layers = [keras.Input((3,)), keras.layers.Dense(2, name="hidden")]
    if dropout:
        layers.append(keras.layers.Dropout(dropout, seed=1, name="dropout"))
    model = keras.Sequential([*layers, keras.layers.Dense(1, name="out")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def tiny_dataset() -> tf.data.Dataset:
    x = np.arange(24, dtype=np.float32).reshape(8, 3) / 24.0
    return tf.data.Dataset.from_tensor_slices((x, x.sum(axis=1))).repeat().batch(4)


def save_steps(model: keras.Model, directory: str, steps=(1, 2, 3)):
    """One checkpoint a step; at step k every weight is k."""
    manager = checkpoints.checkpoint_manager(model, directory, max_to_keep=len(steps))
    for step in steps:
        for variable in model.trainable_variables:
            variable.assign(np.full(variable.shape, step, np.float32))
        model.optimizer.iterations.assign(step)
        manager.save(checkpoint_number=step)


def corrupt(prefix: str, how: str):
    """Damages the checkpoint files of `prefix` as a crash or a bad disk would."""
    data, index = f"{prefix}.data-00000-of-00001", f"{prefix}.index"
    if how == "truncated_data":
        os.truncate(data, os.path.getsize(data) // 2)
    elif how == "flipped_data_bytes":
        with open(data, "r+b") as f:
            f.seek(os.path.getsize(data) // 2)
            chunk = f.read(8)
            f.seek(-len(chunk), os.SEEK_CUR)
            f.write(bytes(b ^ 0xFF for b in chunk))
    elif how == "truncated_index":
        os.truncate(index, os.path.getsize(index) // 2)
    elif how == "missing_data":
        os.remove(data)
    else:
        raise ValueError(how)


def registered_steps(directory: str) -> list[int]:
    state = tf.train.get_checkpoint_state(directory)
    return [int(path.rsplit("-", 1)[1]) for path in state.all_model_checkpoint_paths]


# ------------------------------------------------------------- restore latest
def test_restores_the_newest_checkpoint(tmp_path):
    directory = str(tmp_path) + "/newest"
    save_steps(tiny_model(), directory)
    model = tiny_model()
    assert restore_latest(model, directory) == 3
    for variable in model.trainable_variables:
        np.testing.assert_array_equal(variable, np.full(variable.shape, 3.0))


@pytest.mark.parametrize(
    "how", ["truncated_data", "flipped_data_bytes", "truncated_index", "missing_data"]
)
def test_falls_back_to_the_newest_checkpoint_that_restores(how, tmp_path, caplog):
    directory = str(tmp_path) + f"/{how}"
    save_steps(tiny_model(), directory)
    corrupt(f"{directory}/ckpt-3", how)
    model = tiny_model()
    with caplog.at_level(logging.WARNING, logger="absl"):
        step = restore_latest(model, directory)
    assert step == 2
    assert f"Checkpoint {directory}/ckpt-3 cannot be restored" in caplog.text
    for variable in model.trainable_variables:  # all from ckpt-2, nothing from ckpt-3
        np.testing.assert_array_equal(variable, np.full(variable.shape, 2.0))


def test_raises_when_no_registered_checkpoint_restores(tmp_path):
    directory = str(tmp_path) + "/all_bad"
    save_steps(tiny_model(), directory, steps=(1, 2))
    corrupt(f"{directory}/ckpt-1", "truncated_data")
    corrupt(f"{directory}/ckpt-2", "missing_data")
    with pytest.raises(RuntimeError, match="(?s)none of the checkpoints.*ckpt-2: .*ckpt-1: "):
        restore_latest(tiny_model(), directory)


def test_an_empty_or_missing_directory_has_no_checkpoint(tmp_path):
    assert restore_latest(tiny_model(), str(tmp_path) + "/missing") is None
    os.makedirs(str(tmp_path) + "/empty")
    assert restore_latest(tiny_model(), str(tmp_path) + "/empty") is None


def test_a_first_save_killed_before_the_state_file_starts_from_scratch(tmp_path, caplog):
    directory = str(tmp_path) + "/first_save"
    save_steps(tiny_model(), directory, steps=(1,))
    os.remove(f"{directory}/checkpoint")
    corrupt(f"{directory}/ckpt-1", "truncated_index")
    with caplog.at_level(logging.WARNING, logger="absl"):
        assert restore_latest(tiny_model(), directory) is None
    assert [r for r in caplog.records if r.name == "absl" and r.levelno >= logging.WARNING]


def test_an_unregistered_complete_checkpoint_is_used_without_a_state_file(tmp_path):
    directory = str(tmp_path) + "/no_state"
    save_steps(tiny_model(), directory, steps=(1, 2))
    os.remove(f"{directory}/checkpoint")
    assert restore_latest(tiny_model(), directory) == 2


def test_the_dropout_seed_generator_state_is_restored(tmp_path):
    directory = str(tmp_path) + "/seed"
    model = tiny_model(dropout=0.5)
    state = model.get_layer("dropout").seed_generator.state
    for _ in range(3):
        model(np.ones((2, 3), np.float32), training=True)
    saved = state.numpy()
    checkpoints.checkpoint_manager(model, directory).save(checkpoint_number=1)
    model(np.ones((2, 3), np.float32), training=True)
    assert not np.array_equal(state, saved)
    restore_latest(model, directory)
    np.testing.assert_array_equal(state, saved)


# --------------------------------------------------------------- checkpointer
def fit_with_checkpointer(directory, epochs=5, every_n_steps=6, extra_callbacks=()):
    model = tiny_model()
    checkpointer = Checkpointer(directory, every_n_steps=every_n_steps, max_to_keep=10)
    model.fit(
        tiny_dataset(),
        epochs=epochs,
        steps_per_epoch=3,
        shuffle=False,
        callbacks=[*extra_callbacks, checkpointer],
        verbose=0,
    )
    return model


def test_saves_at_epoch_ends_every_n_steps_and_at_the_end(tmp_path):
    directory = str(tmp_path) + "/every"
    fit_with_checkpointer(directory, epochs=5, every_n_steps=6)
    assert registered_steps(directory) == [6, 12, 15]


def test_a_checkpoint_includes_the_epoch_end_changes_of_earlier_callbacks(tmp_path):
    directory = str(tmp_path) + "/epoch_end"

    class MarkEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.get_layer("out").bias.assign([100.0 + epoch])

    fit_with_checkpointer(directory, epochs=1, every_n_steps=3, extra_callbacks=[MarkEpoch()])
    model = tiny_model()
    assert restore_latest(model, directory) == 3
    np.testing.assert_array_equal(model.get_layer("out").bias, [100.0])


def test_an_epoch_cut_short_is_not_saved(tmp_path):
    directory = str(tmp_path) + "/stopped"

    class StopInSecondEpoch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == 5:
                self.model.stop_training = True

    fit_with_checkpointer(
        directory, epochs=4, every_n_steps=3, extra_callbacks=[StopInSecondEpoch()]
    )
    assert registered_steps(directory) == [3]


def test_removes_what_interrupted_writes_left(tmp_path):
    directory = str(tmp_path) + "/partial"
    os.makedirs(f"{directory}/ckpt-3_temp")
    with open(f"{directory}/ckpt-3_temp/part-00000-of-00001.index.tempstate1", "wb") as f:
        f.write(b"\0" * 10)
    with open(f"{directory}/checkpoint.tmp0123abcd", "w") as f:
        f.write('model_checkpoint_path: "ckp')
    fit_with_checkpointer(directory, epochs=1, every_n_steps=3)
    assert sorted(os.listdir(directory)) == sorted(
        ["checkpoint", "ckpt-3.data-00000-of-00001", "ckpt-3.index"]
    )


def smoke_config():
    return digits_config.get_config("smoke")


# ---------------------------------------------------------- resume arithmetic
@pytest.mark.parametrize("field, value", [("steps", 25), ("checkpoint_every_steps", 15)])
def test_fields_that_are_not_whole_epochs_raise(field, value):
    config = smoke_config()
    config.train[field] = value
    with pytest.raises(
        ValueError,
        match=rf"train.{field} \({value}\) must be a multiple of train.steps_per_epoch \(10\)",
    ):
        experiment.resolve_config(config)


def test_whole_epochs_are_accepted():
    config = smoke_config()
    config.train.steps, config.train.checkpoint_every_steps = 40, 20
    assert experiment.resolve_config(config).train.steps == 40


def test_resume_epoch():
    assert experiment.resume_epoch(0, 10) == 0
    assert experiment.resume_epoch(20, 10) == 2
    with pytest.raises(ValueError, match="step 25, inside an epoch of 10 steps"):
        experiment.resume_epoch(25, 10)


def test_train_batches_from_a_step_are_the_uninterrupted_ones():
    config = experiment.resolve_config(smoke_config())
    config.train.batch_size = 4  # max_shift stays on: augmentation seeds included
    rng = np.random.default_rng(0)
    images = rng.random((12, 8, 8, 1), np.float32)
    source = LabelledStream.from_arrays("source", images, np.arange(12) % 2, ["a", "b"])
    target = TargetSplit.from_arrays(
        images, np.arange(12) % 3, images[:3], [0, 1, 2], ["x", "y", "z"], 2, seed=0
    )
    data = MultiStreamData([source], target)
    uninterrupted = iter(experiment.train_batches(data, config))
    for _ in range(3):
        next(uninterrupted)
    expected = tf.nest.flatten(next(uninterrupted))
    resumed = tf.nest.flatten(next(iter(experiment.train_batches(data, config, 3))))
    assert len(resumed) == len(expected)
    for got, want in zip(resumed, expected):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------- end-to-end tests
def train_command(workdir: str) -> list[str]:
    return [sys.executable, "-m", "launch.train", *TRAIN_FLAGS, f"--workdir={workdir}"]


def train_env() -> dict:
    return {**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}


def train(workdir: str, timeout: float = 600) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        train_command(workdir),
        cwd=REPO_ROOT,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, output_of(completed)
    return completed


def output_of(completed) -> str:
    return f"exit {completed.returncode}\n--- stdout\n{completed.stdout}\n--- stderr\n{completed.stderr}"


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def training_state(path: str) -> dict[str, np.ndarray]:
    """Every variable a checkpoint saved (model, optimizer, seed states), by key."""
    reader = tf.train.load_checkpoint(path)
    keys = set(reader.get_variable_to_shape_map()) - NOT_TRAINING_STATE
    return {key: reader.get_tensor(key) for key in keys}


def assert_same_run(workdir: str, reference: str):
    """Final checkpoint, results and logs of `workdir` equal those of `reference` exactly."""
    got = training_state(f"{workdir}/checkpoints/ckpt-{STEPS}")
    want = training_state(f"{reference}/checkpoints/ckpt-{STEPS}")
    assert sorted(got) == sorted(want)
    assert SEED_STATE in got and PSEUDO_LABELS in got and ITERATIONS in got
    assert got[ITERATIONS] == STEPS
    different = [key for key in want if not np.array_equal(got[key], want[key])]
    assert not different, f"{len(different)} variables differ, e.g. {different[:5]}"
    results = [read_json(f"{d}/results.json") for d in (workdir, reference)]
    for result in results:
        result.pop("train_seconds")
    assert results[0] == results[1]  # accuracy, pseudo-label stats, mixing weights
    with (
        np.load(f"{workdir}/mixing_weights.npz") as a,
        np.load(f"{reference}/mixing_weights.npz") as b,
    ):
        np.testing.assert_array_equal(a["steps"], b["steps"])
        np.testing.assert_array_equal(a["weights"], b["weights"])
    for directory in (workdir, reference):
        with open(f"{directory}/train_log.csv", newline="") as f:
            epochs = [row["epoch"] for row in csv.DictReader(f)]
        assert epochs == [str(e) for e in range(STEPS // STEPS_PER_EPOCH)]  # no repeated rows


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    """The work directory of one uninterrupted run."""
    workdir = str(tmp_path_factory.mktemp("reference") / "run")
    train(workdir)
    return workdir


@pytest.mark.slow
def test_two_identical_runs_give_identical_weights(reference, tmp_path):
    workdir = str(tmp_path / "run")
    train(workdir)
    assert_same_run(workdir, reference)


def wait_for_checkpoint(workdir: str, step: int, process: subprocess.Popen, timeout: float = 600):
    """Polls the checkpoint state file until it registers `ckpt-<step>`."""
    state_file = os.path.join(workdir, "checkpoints", "checkpoint")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before ckpt-{step}")
        if os.path.exists(state_file):
            with open(state_file) as f:
                if f'"ckpt-{step}"' in f.read():
                    return
        time.sleep(0.02)
    pytest.fail(f"no ckpt-{step} after {timeout} s")


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_result(reference, tmp_path):
    workdir = str(tmp_path / "run")
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(
            train_command(workdir), cwd=REPO_ROOT, env=train_env(), stdout=log, stderr=log
        )
        try:
            wait_for_checkpoint(workdir, STEPS_PER_EPOCH, process)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not os.path.exists(f"{workdir}/results.json")

    completed = train(workdir)
    resumed_from = [
        int(line.split("Resuming from step ")[1].split()[0])
        for line in completed.stderr.splitlines()
        if "Resuming from step " in line
    ]
    assert len(resumed_from) == 1 and resumed_from[0] in (10, 20), output_of(completed)
    assert f"Epoch {STEPS // STEPS_PER_EPOCH}/{STEPS // STEPS_PER_EPOCH}" in completed.stdout
    assert_same_run(workdir, reference)


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(reference, workdir)
    corrupt(f"{workdir}/checkpoints/ckpt-{STEPS}", "truncated_data")

    completed = train(workdir)
    assert f"Checkpoint {workdir}/checkpoints/ckpt-{STEPS} cannot be restored" in completed.stderr
    assert f"Resuming from step {STEPS - STEPS_PER_EPOCH} " in completed.stderr
    assert_same_run(workdir, reference)


@pytest.mark.slow
def test_a_write_killed_midway_resumes_from_the_previous_checkpoint(reference, tmp_path):
    """What a kill during the write of ckpt-30 leaves, by the order TF writes in."""
    workdir = str(tmp_path / "run")
    shutil.copytree(reference, workdir)
    directory = f"{workdir}/checkpoints"
    last = f"ckpt-{STEPS}"
    os.makedirs(f"{directory}/{last}_temp")
    with open(
        f"{directory}/{last}_temp/part-00000-of-00001.data-00000-of-00001.tempstate7", "wb"
    ) as f:
        f.write(b"\0" * 100)  # a shard still being written
    corrupt(f"{directory}/{last}", "truncated_index")  # the merged index, written in place
    with open(f"{directory}/checkpoint.tmp4f2a", "w") as f:
        f.write(f'model_checkpoint_path: "{last}')  # the state file's temporary copy
    with open(f"{directory}/checkpoint", "w") as f:  # the state file: not yet renamed
        f.write(
            f'model_checkpoint_path: "ckpt-{STEPS - STEPS_PER_EPOCH}"\n'
            + "".join(
                f'all_model_checkpoint_paths: "ckpt-{s}"\n'
                for s in range(STEPS_PER_EPOCH, STEPS, STEPS_PER_EPOCH)
            )
        )

    completed = train(workdir)
    assert f"Resuming from step {STEPS - STEPS_PER_EPOCH} " in completed.stderr
    assert "cannot be restored" not in completed.stderr  # ckpt-30 was never registered
    assert not os.path.exists(f"{directory}/{last}_temp")
    assert not [name for name in os.listdir(directory) if name.startswith("checkpoint.tmp")]
    assert registered_steps(directory)[-1] == STEPS
    assert_same_run(workdir, reference)
