"""The batches skipped for non-finite values, told each epoch; a run that skips them all stops.

With `train.on_nonfinite=skip` (or an XLA step, which always skips), a batch whose loss
or gradient is NaN or Inf leaves the model as it was and is counted in the model's
`nonfinite_skipped`. A few such batches are noise in the data; an epoch of them is a dead
run (weights already non-finite, or a learning rate that diverges at every step), which
would otherwise go on to its last step, be evaluated and exported as if it had trained.
`SkippedBatchesGuard` logs each epoch's count and stops such a run with a
`TrainingStoppedError` before the epoch's checkpoint is written.
"""

from __future__ import annotations

import keras
from absl import logging

from gradmix_tf.errors import TrainingStoppedError


def skipped_batches(model: keras.Model) -> int:
    """The batches `model` skipped for non-finite values so far (0 for a model that
    does not count them)."""
    counter = getattr(model, "nonfinite_skipped", None)
    return 0 if counter is None else int(counter.numpy())


class SkippedBatchesGuard(keras.callbacks.Callback):
    """Logs the batches each epoch skipped; stops the run when an epoch skipped every one.

    Put it before the `Checkpointer`, so that the dead epoch is not saved.
    """

    def __init__(self):
        super().__init__()
        self._skipped_before = 0
        self._batches = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._skipped_before = skipped_batches(self.model)
        self._batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches = batch + 1

    def on_epoch_end(self, epoch, logs=None):
        skipped = skipped_batches(self.model) - self._skipped_before
        if not skipped:
            return
        logging.warning(
            "Epoch %d: %d of %d batches skipped for a non-finite (NaN or Inf) loss or gradient.",
            epoch + 1,
            skipped,
            self._batches,
        )
        if skipped < self._batches:
            return
        first = epoch * self._batches + 1
        raise TrainingStoppedError(
            f"Every batch of epoch {epoch + 1} (training steps {first}-{first + skipped - 1}) "
            "had a non-finite (NaN or Inf) loss or gradient and was skipped: the model no "
            "longer trains, so the run stops (nothing of that epoch is saved). The weights "
            "of the last checkpoint may already be broken: check the data, and train afresh "
            "with a lower optimizer.learning_rate (another --workdir, or --overwrite)."
        )
