"""A NaN in one stream during `fit`: the run stops naming it (or skips), checkpoints stay good."""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf.callbacks.checkpoints import Checkpointer, restore_latest
from gradmix_tf.callbacks.skipped_batches import SkippedBatchesGuard, skipped_batches
from gradmix_tf.data.streams import LabelledStream, MultiStreamData, TargetSplit
from gradmix_tf.errors import TrainingStoppedError
from gradmix_tf.training.gradmix_model import GradMixModel

SHAPE = (8, 8, 1)


def make_data(poison_source: bool) -> MultiStreamData:
    rng = np.random.default_rng(0)
    source_x = rng.random((8, *SHAPE), np.float32)
    if poison_source:
        source_x[:, 0, 0, 0] = np.nan  # every source image carries a NaN pixel
    # from_arrays refuses NaN; a dataset (e.g. a decoding pipeline) is checked only at run time.
    pairs = tf.data.Dataset.from_tensor_slices((source_x, np.arange(8, dtype=np.int32) % 3))
    source = LabelledStream.from_dataset("usps", pairs, ["a", "b", "c"])
    labels = np.arange(12) % 2
    target = TargetSplit.from_arrays(
        rng.random((12, *SHAPE), np.float32),
        labels,
        rng.random((4, *SHAPE), np.float32),
        labels[:4],
        ["x", "y"],
        shots_per_class=6,
        seed=0,
    )
    return MultiStreamData([source], target)


def make_model(on_nonfinite: str) -> GradMixModel:
    keras.utils.set_random_seed(0)
    trunk = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(4, name="features")])
    model = GradMixModel(trunk, ["x", "y"], [["a", "b", "c"]], ["usps"], on_nonfinite=on_nonfinite)
    model.build((None, *SHAPE))
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    return model


def fit(model, data, directory, epochs, initial_epoch=0):
    model.fit(
        data.train_dataset(4, seed=0),
        epochs=epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=2,
        callbacks=[Checkpointer(directory, every_n_steps=2)],
        verbose=0,
    )


def weights_of(model):
    return [v.numpy().copy() for v in model.weights]


def test_stop_names_the_stream_and_keeps_the_last_good_checkpoint(tmp_path):
    directory = str(tmp_path / "checkpoints")
    model = make_model("stop")
    fit(model, make_data(poison_source=False), directory, epochs=1)
    good = weights_of(model)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"stream\(s\) usps at training step 3"
    ):
        fit(model, make_data(poison_source=True), directory, epochs=2, initial_epoch=1)
    assert tf.train.latest_checkpoint(directory).endswith("ckpt-2")
    restored = make_model("stop")
    assert restore_latest(restored, directory) == 2
    for before, after in zip(good, weights_of(restored)):
        assert np.all(np.isfinite(after.astype(np.float64)))
        np.testing.assert_array_equal(before, after)


def test_skip_leaves_the_weights_finite_and_counts(tmp_path):
    directory = str(tmp_path / "checkpoints")
    model = make_model("skip")
    fit(model, make_data(poison_source=False), directory, epochs=1)
    good = weights_of(model)
    fit(model, make_data(poison_source=True), directory, epochs=2, initial_epoch=1)
    assert int(model.nonfinite_skipped.numpy()) == 2
    assert int(model.optimizer.iterations.numpy()) == 2
    # Checkpoints count batches (optimizer steps + skipped): the skipped epoch is saved as
    # step 4, and a model restored from it resumes at batch 4 with the good weights.
    assert tf.train.latest_checkpoint(directory).endswith("ckpt-4")
    restored = make_model("skip")
    assert restore_latest(restored, directory) == 4
    trainable = {id(v) for v in model.trainable_variables}
    for variable, before in zip(model.weights, good):
        if id(variable) in trainable:
            np.testing.assert_array_equal(before, variable.numpy())


def test_an_epoch_of_skipped_batches_stops_the_run_before_its_checkpoint(tmp_path, caplog):
    directory = str(tmp_path / "checkpoints")
    model = make_model("skip")
    fit(model, make_data(poison_source=False), directory, epochs=1)
    with (
        caplog.at_level(logging.WARNING, logger="absl"),
        pytest.raises(
            TrainingStoppedError, match=r"^Every batch of epoch 2 \(training steps 3-4\)"
        ),
    ):
        model.fit(
            make_data(poison_source=True).train_dataset(4, seed=0),
            epochs=3,
            initial_epoch=1,
            steps_per_epoch=2,
            callbacks=[SkippedBatchesGuard(), Checkpointer(directory, every_n_steps=2)],
            verbose=0,
        )
    assert "Epoch 2: 2 of 2 batches skipped for a non-finite (NaN or Inf) loss" in caplog.text
    assert skipped_batches(model) == 2
    assert tf.train.latest_checkpoint(directory).endswith("ckpt-2")  # the dead epoch unsaved
