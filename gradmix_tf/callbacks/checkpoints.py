"""Checkpoints of the whole training state, written at epoch ends, restored exactly.

What a checkpoint holds (`training_checkpoint`): the model's variables (trunk,
heads and the GradMix state: the running mean of rho, r_t, the mixing weights,
the pseudo-label table), the optimizer's (slots, `iterations`, so the step and
the learning-rate schedule) and the model variables that `tf.train.Checkpoint`
does not reach through the model's attributes, such as the state of the seed
generators of `keras.layers.Dropout` (without them a resumed run would replay
the dropout masks of step 0).

When (`Checkpointer`): only at the end of a complete epoch, after the epoch's
other callbacks (a pseudo-label refresh) ran. A checkpoint at step N is thus
the state at the start of epoch N / steps_per_epoch, and a run resumed from it
(`fit(initial_epoch=N // steps_per_epoch)` on the batches after the first N)
repeats the uninterrupted run exactly. No step is written twice by a run.

Atomicity (TensorFlow 2.21, read in `checkpoint_management.py`,
`functional_saver.py` and `tensor_bundle.cc`): `CheckpointManager.save` writes
the variables to `ckpt-N_temp/` (a temporary file renamed when complete), then
`MergeV2Checkpoints` renames the data file to `ckpt-N.data-00000-of-00001`
and writes `ckpt-N.index` in place (not atomically), and only then does the
manager record `ckpt-N` in the `checkpoint` state file, which it writes to a
temporary file and renames over the old one (atomic on a local file system).
A kill at any moment before that rename leaves the state file naming only the
previous checkpoints: `restore_latest` reads that list, so the half-written
`ckpt-N` is ignored and is overwritten when the resumed run reaches step N
(`Checkpointer` removes the stray `*_temp` directories first). A listed
checkpoint that does not read back whole (a file truncated or corrupted on
disk) is skipped, with a warning, for the newest older one that does.
"""

from __future__ import annotations

import glob
import os
import re
import shutil

import keras
import tensorflow as tf
from absl import logging

from gradmix_tf import distribute
from gradmix_tf.errors import CheckpointError

PREFIX = "ckpt"  # checkpoints are `<directory>/ckpt-<step>`


def batches_consumed(model: keras.Model) -> int:
    """Training batches a model has consumed: its optimizer steps plus the
    batches skipped for non-finite values (`GradMixModel(on_nonfinite="skip")`),
    which do not step the optimizer. The data position and checkpoint numbers
    count batches, so a resume after a skip stays exact."""
    skipped = getattr(model, "nonfinite_skipped", None)
    skipped = 0 if skipped is None else int(skipped.numpy())
    return int(model.optimizer.iterations.numpy()) + skipped


def training_checkpoint(model: keras.Model) -> tf.train.Checkpoint:
    """The checkpoint object of a built and compiled model.

    It tracks the model, its optimizer and, as `untracked_model_variables`
    (only when there are any), the model variables the first two do not
    reach (seed generator states).
    """
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    reached = {id(t) for t in tf.train.TrackableView(checkpoint).descendants()}
    untracked = [v for v in model.variables if id(v) not in reached]
    if not untracked:  # the same object graph as checkpoints written before this field
        return checkpoint
    return tf.train.Checkpoint(
        model=model, optimizer=model.optimizer, untracked_model_variables=untracked
    )


def checkpoint_manager(model: keras.Model, directory: str, max_to_keep: int = 3):
    return tf.train.CheckpointManager(
        training_checkpoint(model), directory, max_to_keep=max_to_keep, checkpoint_name=PREFIX
    )


def _step_of(path: str) -> int:
    match = re.search(r"-(\d+)$", path)
    return int(match.group(1)) if match else -1


def checkpoint_paths(directory: str) -> tuple[list[str], bool]:
    """The checkpoints of `directory`, newest first, and whether they are registered.

    Registered: those the `checkpoint` state file lists (complete when written).
    Without a readable state file (a kill during the very first save), the
    `ckpt-<step>.index` files on disk, which may be partial.
    """
    state = tf.train.get_checkpoint_state(directory)
    if state is not None:
        paths = {*state.all_model_checkpoint_paths, state.model_checkpoint_path} - {""}
        return sorted(paths, key=_step_of, reverse=True), True
    indexes = glob.glob(os.path.join(glob.escape(directory), f"{PREFIX}-*.index"))
    paths = {path[: -len(".index")] for path in indexes}
    return sorted(paths, key=_step_of, reverse=True), False


def _read_every_tensor(path: str):
    """Raises unless every tensor of the checkpoint reads back (checksums included)."""
    reader = tf.train.load_checkpoint(path)
    for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)


def reads_back(path: str) -> bool:
    """Whether every tensor of the checkpoint `path` (`<directory>/ckpt-<step>`) reads back."""
    try:
        _read_every_tensor(path)
    except Exception:  # any failure to read makes it unusable
        return False
    return True


def restore_latest(model: keras.Model, directory: str) -> int | None:
    """Restores the newest checkpoint of `directory` that reads back whole.

    Every tensor of a candidate is read (and checksummed) before anything is
    assigned, so a corrupt checkpoint leaves the model untouched. A candidate
    that fails is skipped for the next older one; once one restores, every
    skipped one is logged as a warning naming it (when none restores, the
    error names them all).

    Returns:
        the batches consumed (`batches_consumed`) at the restored checkpoint; None when `directory`
        has no checkpoint, or only unregistered ones that do not read back.

    Raises:
        CheckpointError: (a RuntimeError) when the state file lists checkpoints
            and none restores (rather than silently training from scratch).
    """
    paths, registered = checkpoint_paths(directory)
    if not paths:
        return None
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    failures = []
    for path in paths:
        try:
            _read_every_tensor(path)
            training_checkpoint(model).restore(path).assert_existing_objects_matched()
        except Exception as error:  # any failure to read or match makes it unusable
            message = " ".join(str(error).split())[:300]
            failures.append((path, f"{type(error).__name__}: {message}"))
            continue
        for failed, reason in failures:  # told once the outcome is known
            logging.warning(
                "Checkpoint %s cannot be restored (%s); restored the older %s.",
                failed,
                reason,
                path,
            )
        step = batches_consumed(model)
        logging.info("Restored checkpoint %s (step %d).", path, step)
        return step
    if not registered:
        logging.warning(
            "No checkpoint state file in %s and no complete checkpoint: starting from scratch.",
            directory,
        )
        return None
    reasons = "; ".join(f"{os.path.basename(path)}: {reason}" for path, reason in failures)
    raise CheckpointError(
        f"none of the checkpoints listed in {os.path.join(directory, 'checkpoint')} can be "
        f"restored ({reasons}). Move the directory away to train from scratch, or restore a "
        "copy of it."
    )


def remove_partial_writes(directory: str):
    """Deletes what interrupted saves leave: `ckpt-*_temp/` and `checkpoint.tmp*`."""
    pattern = os.path.join(glob.escape(directory), "{}")
    for path in glob.glob(pattern.format(f"{PREFIX}-*_temp")):
        logging.info("Removing %s, left by an interrupted checkpoint write.", path)
        shutil.rmtree(path, ignore_errors=True)
    for path in glob.glob(pattern.format("checkpoint.tmp*")):
        os.remove(path)


class Checkpointer(keras.callbacks.Callback):
    """Saves the training state at the end of complete epochs, every N steps and last.

    At the end of an epoch, it saves when the epoch ran all its steps and
    the step has reached the next multiple of `every_n_steps` since the last
    save; at the end of training, it saves the last complete epoch if that
    is not saved yet. An epoch cut short (`model.stop_training`, e.g.
    `TerminateOnNaN`) is never saved. Checkpoints thus only fall on epoch
    boundaries, which is what makes resuming exact (module docstring); make
    `every_n_steps` a multiple of `steps_per_epoch` to save exactly every N
    steps (otherwise: at the first epoch end after each multiple).

    Under `MultiWorkerMirroredStrategy` only the chief writes `directory`;
    every other worker saves alongside it (a save may need every worker)
    into a temporary directory of its own, removed at the end of training.

    Put it last among the callbacks, after those that change model state at
    an epoch's end (`PseudoLabeler`), so a checkpoint includes their changes.

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
        self._worker_directory = None  # a non-chief worker's private copy
        self._last_saved = 0
        self._batches_done = 0
        self._epoch_complete = False

    def _step(self) -> int:
        return batches_consumed(self.model)

    def _is_chief(self) -> bool:
        return distribute.is_chief(getattr(self.model, "distribute_strategy", None))

    def _save(self, step: int):
        if self._manager is None:
            directory = self.directory
            if not self._is_chief():  # saves with the chief, into a directory of its own
                directory = self._worker_directory = distribute.worker_directory(directory)
            self._manager = checkpoint_manager(self.model, directory, self.max_to_keep)
        path = self._manager.save(checkpoint_number=step)
        self._last_saved = step
        logging.info("Saved checkpoint %s", path)

    def on_train_begin(self, logs=None):
        if self._is_chief():
            remove_partial_writes(self.directory)
        self._last_saved = self._step()
        self._epoch_complete = False

    def on_epoch_begin(self, epoch, logs=None):
        self._batches_done = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches_done = batch + 1  # batch: the last step's index in the epoch

    def on_epoch_end(self, epoch, logs=None):
        steps = self.params.get("steps") if self.params else None
        if steps:
            self._epoch_complete = self._batches_done == steps
        else:  # unknown epoch length: complete unless training was stopped
            self._epoch_complete = not self.model.stop_training
        step = self._step()
        if (
            self._epoch_complete
            and step // self.every_n_steps > self._last_saved // self.every_n_steps
        ):
            self._save(step)

    def on_train_end(self, logs=None):
        step = self._step()
        if self._epoch_complete and step != self._last_saved:
            self._save(step)
        if self._worker_directory:
            distribute.remove_worker_directory(self.directory, self._worker_directory)
            self._worker_directory, self._manager = None, None
