"""The errors a user can fix: a config, a flag, a path, the data or a work directory.

Every error of this kind is a `UserError`; a launcher prints its message on one line
(`error: ...`) and exits with code 2, while any other exception is a bug and keeps its
traceback (`launch/errors.py`). Each subclass also derives from the built-in error a
caller would have caught before (`ConfigError` is a `ValueError`, ...), so such code keeps
working. The data errors live with their checks: `gradmix_tf.data.checks.DataError` (a
`ValueError`) and `gradmix_tf.datasets.DatasetNotReadyError` (a `RuntimeError`).
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; its message says what happened and what to do."""


class ConfigError(UserError, ValueError):
    """A config field (or an option derived from one) has a value the run cannot use."""


class WorkdirError(UserError, ValueError):
    """A work directory cannot be used as asked: not a directory, not writable, or it
    holds a run of another config."""


class NotAWorkdirError(WorkdirError, FileNotFoundError):
    """A directory holds no run of `launch.train` (no `config.json`)."""


class CheckpointError(UserError, RuntimeError):
    """A work directory's checkpoints exist but none of them can be restored."""


class TrainingStoppedError(UserError, RuntimeError):
    """Training stopped on a non-finite loss or gradient; the last checkpoint is intact."""
