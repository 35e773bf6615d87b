"""Named tasks: each builds a `MultiStreamData` from a seed and options.

A task is registered as "module:function"; the module is imported only when
the task is loaded, so a task that needs optional data code costs nothing to
the others.
"""

from __future__ import annotations

import importlib

TASKS = {
    "digits": "gradmix_tf.data.digits:digits_task",
    "digits_mnistm": "gradmix_tf.datasets.digit_tasks:mnist_usps_to_mnistm",
    "actions": "gradmix_tf.data.actions:actions_task",
    "actions_hmdb51": "gradmix_tf.video.hmdb51_task:hmdb51_task",
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
