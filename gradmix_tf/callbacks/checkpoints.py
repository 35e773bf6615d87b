"""Checkpoints of the whole training state: model, optimizer and GradMix state.

`tf.train.Checkpoint` saves the model's variables (trunk, heads and the
GradMix state: the running mean of rho, r_t, the pseudo-label table) and the
optimizer's (slots, iterations). A checkpoint is written under a temporary
name and renamed by `tf.train.CheckpointManager`, so a kill mid-write leaves
the previous one usable.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from absl import logging


def training_checkpoint(model: keras.Model) -> tf.train.Checkpoint:
    """The checkpoint object of a compiled model (the optimizer must be built)."""
    return tf.train.Checkpoint(model=model, optimizer=model.optimizer)


def checkpoint_manager(model: keras.Model, directory: str, max_to_keep: int = 3):
    return tf.train.CheckpointManager(
        training_checkpoint(model), directory, max_to_keep=max_to_keep
    )


def restore_latest(model: keras.Model, directory: str) -> int | None:
    """Restores the latest checkpoint in `directory` into `model`.

    Returns:
        the optimizer step it was saved at, or None when there is none.
    """
    latest = tf.train.latest_checkpoint(directory)
    if latest is None:
        return None
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    training_checkpoint(model).restore(latest).assert_existing_objects_matched()
    return int(model.optimizer.iterations.numpy())


class Checkpointer(keras.callbacks.Callback):
    """Saves a checkpoint every `every_n_steps` optimizer steps and every epoch.

    Put it after the callbacks that change model state at an epoch's end
    (`PseudoLabeler`), so the epoch's checkpoint includes their changes.

    Args:
        directory: where checkpoints go (`ckpt-<step>` files).
        every_n_steps: checkpoint frequency, in optimizer steps.
        max_to_keep: how many recent checkpoints to keep.
    """

    def __init__(self, directory: str, every_n_steps: int = 500, max_to_keep: int = 3):
        super().__init__()
        if every_n_steps <= 0:
            raise ValueError(f"every_n_steps must be positive, got {every_n_steps}.")
        self.directory = directory
        self.every_n_steps = every_n_steps
        self.max_to_keep = max_to_keep
        self._manager = None

    def _save(self, force: bool = True):
        if self._manager is None:
            self._manager = checkpoint_manager(self.model, self.directory, self.max_to_keep)
        step = int(self.model.optimizer.iterations.numpy())
        latest = self._manager.latest_checkpoint
        if not force and latest and latest.endswith(f"-{step}"):
            return
        path = self._manager.save(checkpoint_number=step)
        logging.info("Saved checkpoint %s", path)

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) % self.every_n_steps == 0:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        # After the epoch's other callbacks (e.g. a pseudo-label refresh) ran.
        self._save()

    def on_train_end(self, logs=None):
        self._save(force=False)
