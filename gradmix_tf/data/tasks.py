"""Named tasks: each builds a `MultiStreamData` from a seed and options."""

from __future__ import annotations

from gradmix_tf.data import digits

TASKS = {
    "digits": digits.digits_task,
}


def load_task(name: str, seed: int, shots_per_class: int | None, **options):
    """Builds task `name` (see `TASKS`) for a seed and a labelled-target size."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}.")
    return TASKS[name](seed=seed, shots_per_class=shots_per_class, **options)
