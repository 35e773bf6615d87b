"""A work directory records one experiment: its config, checkpoints, logs and result.

`experiment.train_and_evaluate` asks this module, before it writes anything, what a
directory holds:

- `check_same_config`: the stored `config.json` against the config of the run asked
  for. The same config resumes; another one is refused with a `WorkdirError` naming the
  fields that differ, and the directory is left as it was. `UNCOMPARED_FIELDS` do not
  change what is trained: `train.verbose` (Keras's progress output), `train.distribute`
  (one device, several, or several hosts train the same model: the tests check that two
  replicas equal one device to float rounding, so a run killed on two GPUs may resume on
  one), `gradmix.gradient_memory` (gradients kept or recomputed: the same step, tested to
  float rounding; a directory from before the field existed resumes) and `benchmark`
  (launch.benchmark's method and seed lists). `config.json` keeps
  the values of the run that started the directory.
- `finished_results`: the results of a finished run (`results.json` and the checkpoint of
  the last step present), which is reported rather than trained or evaluated again.
- `clear_run_files`: what `--overwrite` deletes to start afresh (the files in
  `RUN_FILES`; anything else in the directory stays).

`launch.benchmark` refuses a changed config for its run directories with the same
comparison (`gradmix_tf.benchmark`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import ml_collections

from gradmix_tf.callbacks.checkpoints import PREFIX, checkpoint_paths, reads_back
from gradmix_tf.errors import NotAWorkdirError, WorkdirError

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

UNCOMPARED_FIELDS = ("train.verbose", "train.distribute", "gradmix.gradient_memory", "benchmark")
"""Config fields (or groups) that do not change the experiment's result (module docstring)."""

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
    "gradmix.label_adapter": False,
    "gradmix.adapter_start": "name_match",
    "gradmix.adapter_strength": 4.0,
    "gradmix.adapter_estimate": "target_head",
    "gradmix.adapter_learning_rate_scale": 1.0,
    "gradmix.adapter_absent_rows": "uniform",
    "gradmix.adapter_warmup_epochs": 0,
    "gradmix.adapter_refresh_every": 0,
    "gradmix.adapter_trace_penalty": 0.0,
    "data.task_options.label_space_source": "",
}
"""Config fields added after work directories were written, with the value that trains
what such a directory trained: a stored config without the field equals one with it."""


def _compared(field: str) -> bool:
    return not any(field == f or field.startswith(f + ".") for f in UNCOMPARED_FIELDS)


_ABSENT = object()


def config_differences(stored: dict, config: dict) -> list[tuple[str, object, object]]:
    """(dotted field, stored value, new value) of every compared field that differs:
    top-level fields first (`method`, `seed`), then in the order of the stored config."""
    before, after = _flatten(stored), _flatten(config)
    for field, value in ADDED_FIELDS.items():
        if field not in before and after.get(field, _ABSENT) == value:
            before[field] = value
    fields = list(dict.fromkeys([*before, *after]))
    fields.sort(key=lambda field: field.count("."))  # stable: the config's order within a depth
    return [
        (field, before.get(field, _ABSENT), after.get(field, _ABSENT))
        for field in fields
        if _compared(field) and before.get(field, _ABSENT) != after.get(field, _ABSENT)
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


def check_is_directory(workdir: str):
    """Raises `WorkdirError` when `workdir` exists and is not a directory."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir {workdir} is a file, not a directory: use another path.")


def stored_config(workdir: str) -> dict | None:
    """The `config.json` of `workdir` (None when there is none)."""
    check_is_directory(workdir)
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise WorkdirError(
            f"cannot read {path} ({error}): {workdir} does not say which config it trained."
        ) from None


def check_same_config(
    workdir: str, config: ml_collections.ConfigDict, ways_out: str = TRAIN_AGAIN
) -> bool:
    """Whether `workdir` holds a run of `config` (False: no run yet).

    Raises:
        WorkdirError: `workdir` is a file, or holds a run of another config (the message
            names the differing fields and says `ways_out`).
    """
    stored = stored_config(workdir)
    if stored is None:
        return False
    differences = config_differences(stored, config_as_dict(config))
    if differences:
        raise WorkdirError(
            f"{workdir} holds a run of another config ({describe_differences(differences)}): "
            f"{ways_out}."
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


def finished_results(workdir: str, steps: int) -> dict | None:
    """The results of a finished run in `workdir`: its `results.json` exists and the
    checkpoint of step `steps` is registered and reads back whole. None for a run that is
    not finished, or not started (a damaged last checkpoint: the run resumes before it)."""
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
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


def clear_run_files(workdir: str):
    """Deletes what a run wrote in `workdir` (`RUN_FILES`), for a fresh start."""
    for name in RUN_FILES:
        path = os.path.join(workdir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a work directory of `launch.train` was trained with."""
    stored = stored_config(workdir) if os.path.isdir(workdir) else None
    if stored is None:
        what = "does not exist" if not os.path.exists(workdir) else "has no config.json"
        raise NotAWorkdirError(
            f"{workdir} {what}: it is not a work directory of `python -m launch.train`."
        )
    return ml_collections.ConfigDict(stored)


def write_json(path: str, content: dict | str):
    """Writes `path` whole or not at all (a temporary file renamed over it)."""
    with open(path + ".partial", "w") as f:
        if isinstance(content, str):
            f.write(content)
        else:
            json.dump(content, f, indent=2)
    os.replace(path + ".partial", path)
