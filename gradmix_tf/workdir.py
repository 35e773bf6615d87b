"""A work directory records one experiment: its config, checkpoints, logs and result.

`experiment.train_and_evaluate` opens a directory with `opened`, which checks, before
anything is written, what the directory holds:

- `acquire_lock`: one run at a time. The run holds an exclusive lock on `run.lock`
  (an `fcntl.flock`, which the system drops when the process ends, however it ends) and
  writes its process id into it. A second run on the same directory is refused with a
  `WorkdirError` naming that process; a `run.lock` left by a process that no longer runs
  (a kill -9) is not locked, and is taken over with a warning. Under
  `train.distribute=multi_worker` the workers share the directory and no lock is taken.
- `check_is_ours`: a directory with files but no `config.json` is not a work directory
  of ours: nothing in it is trained over, resumed or deleted (not even by `--overwrite`).
  This covers a user's own directory and a run whose `config.json` was deleted (its
  checkpoints do not say which config trained them).
- `check_same_config`: the stored `config.json` against the config of the run asked
  for. The same config resumes; another one is refused with a `WorkdirError` naming the
  fields that differ, and the directory is left as it was. `UNCOMPARED_FIELDS` may change
  on resume, because they do not change what is trained: `train.verbose` (Keras's
  progress output), `train.on_nonfinite` (a run that stops on a non-finite batch and the
  same run skipping such batches train alike up to that batch: the stop's advice is to
  resume with `skip`), `train.distribute` (one device, several, or several hosts train the
  same model: the tests check that two replicas equal one device to float rounding, so a
  run killed on two GPUs may resume on one), `step.gradient_memory` (gradients kept or
  recomputed: the same step, tested to float rounding; "one_pass" the same step too,
  except for dropout's masks; a directory from before the field existed resumes) and `benchmark` (launch.benchmark's method and seed lists). A change of
  one of them is logged. Every other field, `optimizer.learning_rate` included, changes
  what is trained: a run cannot resume with it (a lower learning rate after a non-finite
  stop is a new run: another --workdir, or --overwrite). `config.json` holds the config
  of the latest run of the directory.
- `finished_results`: the results of a finished run, which is reported rather than
  trained or evaluated again. A run is finished when everything it promises is on disk:
  the checkpoint of the last step, a complete `export/` and `results.json`, written last.
  The export is written beside (`export.partial/`) and renamed into place
  (`write_directory`), so a kill leaves the old export or none, never half of one.
- `clear_run_files`: what `--overwrite` deletes to start afresh (the files in
  `RUN_FILES`, and what interrupted writes of them left; anything else in the directory
  stays).

A directory that the run created and left empty (a data error before anything was
written) is removed when the run ends.

`launch.benchmark` refuses a changed config for its run directories with the same
comparison (`gradmix_tf.benchmark`).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import math
import os
import shutil
import tempfile

import ml_collections
from absl import logging

from gradmix_tf import config_renames
from gradmix_tf.callbacks.checkpoints import PREFIX, checkpoint_paths, reads_back
from gradmix_tf.errors import NotAWorkdirError, WorkdirError
from gradmix_tf.export.saved_model import METADATA_FILE

RUN_FILES = (
    "config.json",
    "checkpoints",
    "tensorboard",
    "mixing_weights.npz",
    "train_log.csv",
    "results.json",
    "evaluation.json",
    "export",
    "wall_seconds.json",  # launch.benchmark's
)
"""What a run writes in its work directory (experiment.py's module docstring)."""

RUN_FILE_PATTERNS = ("label_relation_*.png",)
"""Files a run writes one of for each of its label adapters."""

PARTIAL = ".partial"
"""The suffix of a file or directory being written, renamed into place when complete."""

REPLACED = ".replaced"
"""The suffix of a directory moved aside while its new version is renamed into place."""

LOCK_FILE = "run.lock"
"""The lock of the run writing the directory (`acquire_lock`)."""

UNCOMPARED_FIELDS = (
    "train.verbose",
    "train.on_nonfinite",
    "train.distribute",
    "step.gradient_memory",
    "benchmark",
)
"""Config fields (or groups) that may change on resume: they do not change what is
trained (module docstring)."""

TRAIN_AGAIN = "use another --workdir, or --overwrite to delete its run and start afresh"
"""How out of a changed config, said by `launch.train`."""


def config_as_dict(config: ml_collections.ConfigDict) -> dict:
    """`config` as its `config.json` holds it (tuples as lists)."""
    return json.loads(config.to_json_best_effort())


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


ADDED_FIELDS = {
    "step.label_adapter": False,
    "step.adapter_sources": [],
    "step.adapter_start": "name_match",
    "step.adapter_strength": 4.0,
    "step.adapter_estimate": "target_head",
    "step.adapter_learning_rate_scale": 1.0,
    "step.adapter_absent_rows": "uniform",
    "step.adapter_warmup_epochs": 0,
    "step.adapter_refresh_every": 0,
    "step.adapter_trace_penalty": 0.0,
    "data.task_options.label_space_source": "",
    "model.batch_norm": False,
}
"""Config fields added after work directories were written, with the value that trains
what such a directory trained: a stored config without the field equals one with it."""


def _compared(field: str) -> bool:
    return not any(field == f or field.startswith(f + ".") for f in UNCOMPARED_FIELDS)


_ABSENT = object()


def config_differences(
    stored: dict, config: dict, compared: bool = True
) -> list[tuple[str, object, object]]:
    """(dotted field, stored value, new value) of every compared field that differs
    (`compared=False`: of every uncompared one): top-level fields first (`method`,
    `seed`), then in the order of the stored config."""
    before, after = _flatten(stored), _flatten(config)
    for field, value in ADDED_FIELDS.items():
        if field not in before and field in after:  # the value such a run trained with
            before[field] = value
    fields = list(dict.fromkeys([*before, *after]))
    fields.sort(key=lambda field: field.count("."))  # stable: the config's order within a depth
    return [
        (field, before.get(field, _ABSENT), after.get(field, _ABSENT))
        for field in fields
        if _compared(field) == compared and before.get(field, _ABSENT) != after.get(field, _ABSENT)
    ]


def _value(value) -> str:
    if value is _ABSENT:
        return "(absent)"
    text = repr(tuple(value) if isinstance(value, list) else value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe_differences(differences, limit: int = 4) -> str:
    """`method 'gradmix' -> 'joint', seed 0 -> 3 and 2 more`."""
    shown = [f"{field} {_value(old)} -> {_value(new)}" for field, old, new in differences[:limit]]
    more = len(differences) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _names(names: list[str], limit: int = 3) -> str:
    more = len(names) - limit
    return ", ".join(names[:limit]) + (f" and {more} more" if more > 0 else "")


def check_is_directory(workdir: str):
    """Raises `WorkdirError` when `workdir` exists and is not a directory."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir {workdir} is a file, not a directory: use another path.")


def check_is_ours(workdir: str):
    """Raises `WorkdirError` when `workdir` holds files but no `config.json` (module
    docstring): a directory of the user's, or a run that does not say its config."""
    if not os.path.isdir(workdir) or os.path.lexists(os.path.join(workdir, "config.json")):
        return
    names = sorted(set(os.listdir(workdir)) - {LOCK_FILE, "config.json" + PARTIAL})
    if not names:
        return
    if set(names) & set(RUN_FILES):
        raise WorkdirError(
            f"{workdir} holds a run's files ({_names(names)}) but no config.json, so it does "
            "not say which config trained them: nothing in it is resumed, overwritten or "
            "deleted. Put its config.json back to resume it, or use another --workdir."
        )
    raise WorkdirError(
        f"{workdir} is not empty ({_names(names)}) and has no config.json: it is not a work "
        "directory of `python -m launch.train`, and nothing in it is changed (not even by "
        "--overwrite). Use a new or empty --workdir."
    )


def stored_config(workdir: str) -> dict | None:
    """The `config.json` of `workdir` in today's names (`config_renames.upgrade`; None
    when there is none)."""
    check_is_directory(workdir)
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return config_renames.upgrade(json.load(f))
    except (OSError, ValueError) as error:
        raise WorkdirError(
            f"cannot read {path} ({error}): {workdir} does not say which config it trained."
        ) from None


def check_same_config(
    workdir: str, config: ml_collections.ConfigDict, ways_out: str = TRAIN_AGAIN
) -> bool:
    """Whether `workdir` holds a run of `config` (False: no run yet).

    Raises:
        WorkdirError: `workdir` is a file, holds files but no `config.json`
            (`check_is_ours`), or holds a run of another config (the message names the
            differing fields and says `ways_out`).
    """
    check_is_ours(workdir)
    stored = stored_config(workdir)
    if stored is None:
        return False
    differences = config_differences(stored, config_as_dict(config))
    if differences:
        raise WorkdirError(
            f"{workdir} holds a run of another config ({describe_differences(differences)}): "
            f"{ways_out}."
        )
    changed = config_differences(stored, config_as_dict(config), compared=False)
    if changed:
        logging.info(
            "%s: %s (fields that may change on resume).", workdir, describe_differences(changed)
        )
    return True


def check_writable(workdir: str):
    """Creates `workdir` if needed and checks that files can be written in it."""
    check_is_directory(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.TemporaryFile(dir=workdir):
            pass
    except OSError as error:
        raise WorkdirError(
            f"cannot write to the work directory {workdir} ({error.strerror or error}): "
            "use another --workdir."
        ) from None


# ------------------------------------------------------------------------- the lock
def _holder(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip() or "?"
    except OSError:
        return "?"


def _process_runs(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def acquire_lock(workdir: str) -> tuple[int | None, str | None]:
    """Locks `workdir` for this process (module docstring).

    Returns:
        the lock's file descriptor for `release_lock` (None when no lock can be written
        there: a directory that cannot be written, which `check_writable` reports when a
        write is needed), and the process id a `run.lock` left over names (None: there was
        none), for `log_taken_over`.

    Raises:
        WorkdirError: another process holds the lock.
    """
    path = os.path.join(workdir, LOCK_FILE)
    while True:
        try:
            os.makedirs(workdir, exist_ok=True)
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return None, None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise WorkdirError(
                f"{workdir} is in use by another run (process {_holder(path)}, {path}): wait "
                "for it to end, or use another --workdir."
            ) from None
        except OSError:  # a file system without locks
            os.close(descriptor)
            logging.warning("Cannot lock %s: nothing stops two runs writing it at once.", path)
            return None, None
        try:
            same_file = os.fstat(descriptor).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # released and removed by its holder meanwhile
            same_file = False
        if same_file:
            break
        os.close(descriptor)
    left_by = _holder(path)
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    return descriptor, (None if left_by in ("?", str(os.getpid())) else left_by)


def log_taken_over(workdir: str, left_by: str | None):
    """Warns that the `run.lock` of process `left_by` (a killed run's) was taken over."""
    if left_by is not None:
        logging.warning(
            "%s was left by process %s, which %s: taken over.",
            os.path.join(workdir, LOCK_FILE),
            left_by,
            "no longer runs" if not _process_runs(left_by) else "holds no lock on it",
        )


def release_lock(workdir: str, descriptor: int):
    """Removes the lock of `acquire_lock` and lets it go."""
    with contextlib.suppress(OSError):
        os.remove(os.path.join(workdir, LOCK_FILE))
    os.close(descriptor)


@contextlib.contextmanager
def opened(
    workdir: str, config: ml_collections.ConfigDict, overwrite: bool = False, lock: bool = True
):
    """The checks of a run on `workdir` before it writes anything (module docstring),
    under the directory's lock (`lock=False`: none) held until the block ends; yields
    whether `workdir` holds a run of `config` to resume or report (never with
    `overwrite`). A directory created here and empty at the end is removed.

    Raises:
        WorkdirError: a file, a directory in use, not ours, or holding another config's run.
    """
    check_is_directory(workdir)
    created = not os.path.exists(workdir)
    descriptor, left_by = acquire_lock(workdir) if lock else (None, None)
    try:
        check_is_ours(workdir)
        stored = not overwrite and check_same_config(workdir, config)
        log_taken_over(workdir, left_by)  # after the checks: a refusal is one line
        yield stored
    finally:
        if descriptor is not None:
            release_lock(workdir, descriptor)
            if created:
                with contextlib.suppress(OSError):
                    os.rmdir(workdir)  # only when empty: nothing was written


# ------------------------------------------------------------------ finished runs
def export_is_complete(path: str) -> bool:
    """Whether `path` holds a whole export of `export_target_model` (its graph, its
    variables' index and its metadata)."""
    needed = ("saved_model.pb", METADATA_FILE, os.path.join("variables", "variables.index"))
    return all(os.path.isfile(os.path.join(path, name)) for name in needed)


def finished_results(workdir: str, steps: int) -> dict | None:
    """The results of a finished run in `workdir`: its `results.json` exists, its export
    is complete, and the checkpoint of step `steps` is registered and reads back whole.
    None for a run that is not finished, or not started (a damaged last checkpoint: the
    run resumes before it; no export: the run is evaluated and exported again)."""
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path) or not export_is_complete(os.path.join(workdir, "export")):
        return None
    paths, registered = checkpoint_paths(os.path.join(workdir, "checkpoints"))
    last = f"{PREFIX}-{steps}"
    if not registered or last not in {os.path.basename(p) for p in paths}:
        return None
    if not reads_back(os.path.join(workdir, "checkpoints", last)):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # a write cut short: evaluated again


def _remove(path: str):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def clear_run_files(workdir: str, keep: tuple[str, ...] = ()):
    """Deletes what a run wrote in `workdir` (`RUN_FILES` but those in `keep`, and what
    interrupted writes left), for a fresh start."""
    for name in RUN_FILES:
        for path in (name + PARTIAL, name + REPLACED, *(() if name in keep else (name,))):
            _remove(os.path.join(workdir, path))
    for pattern in RUN_FILE_PATTERNS:
        for path in glob.glob(os.path.join(glob.escape(workdir), pattern)):
            _remove(path)


def write_directory(path: str, write):
    """Writes the directory `path` whole or not at all: `write(path + PARTIAL)`, then the
    old `path` (if any) moved aside and the new one renamed into place."""
    partial, replaced = path + PARTIAL, path + REPLACED
    for leftover in (partial, replaced):
        _remove(leftover)
    write(partial)
    if os.path.lexists(path):
        os.rename(path, replaced)
    os.rename(partial, path)
    _remove(replaced)


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a work directory of `launch.train` was trained with."""
    stored = stored_config(workdir) if os.path.isdir(workdir) else None
    if stored is None:
        what = "does not exist" if not os.path.exists(workdir) else "has no config.json"
        raise NotAWorkdirError(
            f"{workdir} {what}: it is not a work directory of `python -m launch.train`."
        )
    return ml_collections.ConfigDict(stored)


def json_safe(content):
    """`content` with every non-finite float (NaN, inf) as None: valid JSON."""
    if isinstance(content, float) and not math.isfinite(content):
        return None
    if isinstance(content, dict):
        return {key: json_safe(value) for key, value in content.items()}
    if isinstance(content, (list, tuple)):
        return [json_safe(value) for value in content]
    return content


def write_json(path: str, content: dict | str):
    """Writes `path` whole or not at all (a temporary file renamed over it); a dict's
    non-finite floats are written as null (`json_safe`)."""
    with open(path + PARTIAL, "w") as f:
        if isinstance(content, str):
            f.write(content)
        else:
            json.dump(json_safe(content), f, indent=2, allow_nan=False)
    os.replace(path + PARTIAL, path)
