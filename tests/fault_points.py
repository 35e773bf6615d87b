"""`python -m launch.train` killed with SIGKILL at a chosen point, for the fault-injection test.

    python -m tests.fault_points POINT --config=configs/digits.py:smoke --workdir=W

runs `launch.train` with the arguments after POINT in a process that kills itself
(`SIGKILL`, as `kill -9` does: no cleanup, no flush) when the run reaches POINT, one of
`POINTS`: a call of a function of the run's, before or after it runs, at its n-th call (of
those that match). The points span the run's phases: data loading, model building,
config.json, training steps, checkpoint writes (before, midway, after), pseudo-labels,
the logs, evaluation, the export and results.json.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys


def kill():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _when_called(owner, name: str, when: str = "before", nth: int = 1, matches=None):
    """Kills the process at the `nth` call of `owner.name` for which `matches(*args)` holds,
    `before` or `after` the call runs."""
    original = getattr(owner, name)
    calls = [0]

    def wrapper(*args, **kwargs):
        hit = False
        if matches is None or matches(*args, **kwargs):
            calls[0] += 1
            hit = calls[0] == nth
        if hit and when == "before":
            kill()
        result = original(*args, **kwargs)
        if hit and when == "after":
            kill()
        return result

    setattr(owner, name, wrapper)  # on a class, a method: the wrapper receives self first


def _at_batch(step: int):
    """Kills the process once the model has consumed `step` training batches."""
    from gradmix_tf.callbacks.checkpoints import Checkpointer, batches_consumed

    def matches(checkpointer, batch, logs=None):
        return batches_consumed(checkpointer.model) == step

    _when_called(Checkpointer, "on_train_batch_end", "after", 1, matches)


def _replacing(target: str, when: str, nth: int = 1):
    """Kills the process before or after the `nth` rename of a `.partial` file over
    `target` (before: the new file is written whole beside it)."""
    _when_called(os, "replace", when, nth, lambda src, dst, **_: str(dst).endswith(target))


def _checkpoint_point(where: str, nth: int):
    import tensorflow as tf
    from tensorflow.python.checkpoint import checkpoint_management
    from tensorflow.python.lib.io import file_io

    if where == "save":  # CheckpointManager.save, before: nothing of ckpt-N written
        _when_called(tf.train.CheckpointManager, "save", "before", nth)
    elif where == "saved":  # after: ckpt-N written and registered
        _when_called(tf.train.CheckpointManager, "save", "after", nth)
    elif where == "unregistered":  # ckpt-N's files written, the state file not yet
        _when_called(checkpoint_management, "update_checkpoint_state_internal", "before", nth)
    elif where == "state_file":  # the state file's temporary copy written, not renamed
        _when_called(
            file_io, "rename", "before", nth, lambda src, dst, *_: str(dst).endswith("checkpoint")
        )


def _install(point: str):
    from gradmix_tf import experiment
    from gradmix_tf.callbacks.pseudo_labels import PseudoLabeler

    phase, _, detail = point.partition(":")
    if point == "data:start":
        _when_called(experiment, "build_data", "before")
    elif point == "data:loaded":
        _when_called(experiment, "load_task", "after")
    elif point == "model:built":
        _when_called(experiment, "build_model", "after")
    elif phase == "config":
        _replacing("config.json", detail)
    elif phase == "train":
        _at_batch(int(detail))
    elif phase == "checkpoint":
        where, _, nth = detail.partition("@")
        _checkpoint_point(where, int(nth) // 10)  # a checkpoint every 10 steps
    elif point == "pseudo_labels:refresh":
        _when_called(PseudoLabeler, "on_epoch_end", "before", 2)
    elif point == "logs:mixing_history":
        _replacing("mixing_weights.npz", "before", 2)
    elif phase == "evaluate":
        _when_called(experiment, "evaluate", detail)
    elif point == "export:start":
        _when_called(experiment, "export_target_model", "before")
    elif point == "export:saved_model":  # the SavedModel written, its metadata not yet
        import keras

        archive_class = type(keras.export.ExportArchive())  # the backend's subclass
        _when_called(archive_class, "write_out", "after")
    elif point == "export:rename":  # export.partial complete, not yet renamed into place
        _when_called(os, "rename", "before", 1, lambda src, dst: str(dst).endswith("export"))
    elif phase == "results":
        _replacing("results.json", detail)
    else:
        raise ValueError(f"unknown point {point!r}")


POINTS = (
    "data:start",
    "data:loaded",
    "model:built",
    "config:before",
    "config:after",
    "train:3",
    "checkpoint:save@10",
    "checkpoint:unregistered@10",
    "checkpoint:saved@10",
    "pseudo_labels:refresh",
    "checkpoint:state_file@20",
    "logs:mixing_history",
    "train:25",
    "checkpoint:unregistered@30",
    "evaluate:after",
    "export:start",
    "export:saved_model",
    "export:rename",
    "results:before",
    "results:after",
)
"""The points a run is killed at, in the order a run reaches them (`_install`)."""


if __name__ == "__main__":
    point, *arguments = sys.argv[1:]
    _install(point)
    sys.argv = ["-m", *arguments]  # as `python -m launch.train` sees its command line
    runpy.run_module("launch.train", run_name="__main__", alter_sys=True)
