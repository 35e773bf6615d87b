"""Checks of an experiment config's values, before any data is loaded.

`experiment.resolve_config` calls `check_config` on the config with its method's preset
applied. The config flags check the names of the fields (a misspelt `--config.x` is
refused); these check the values: counts positive, rates and probabilities in range, every
name one of those the code knows (optimizer, schedule, task, trunk and its options, ...; a
task given by import path is imported here). A value owned by a module is checked there,
once, and called from here: the strategy and precision (`distribute`), the task
(`tasks.task_builder`), the trunk (`networks.trunk_builder`), the options of the step
(`step.*`, `train.on_nonfinite`, `pseudo_labels.confidence_weights`: by building them,
`GradMixOptions.from_config`). Each error is a `ConfigError` naming the field.
"""

from __future__ import annotations

import inspect
import math

import ml_collections

from gradmix_tf import distribute
from gradmix_tf.errors import ConfigError
from gradmix_tf.networks import trunk_builder
from gradmix_tf.networks.backbones import check_backbone
from gradmix_tf.tasks import task_builder
from gradmix_tf.training.options import GradMixOptions

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")
JIT_COMPILE = ("auto", "on", "off", True, False)
VERBOSE = ("auto", 0, 1, 2)

POSITIVE_COUNTS = (
    "train.batch_size",
    "train.steps",
    "train.steps_per_epoch",
    "train.checkpoint_every_steps",
    "train.log_every_steps",
    "train.eval_batch_size",
    "pseudo_labels.refresh_every",
    "model.dense_units",
)
COUNTS = (  # >= 0
    "seed",
    "data.shots_per_class",
    "data.max_per_class",
    "data.max_shift",
    "pseudo_labels.warmup_epochs",
)
FLAGS = (
    "data.use_sources",
    "pseudo_labels.enabled",
    "pseudo_labels.class_balance",
    "train.deterministic",
)
CHOICES = {
    "optimizer.name": OPTIMIZERS,
    "optimizer.schedule": SCHEDULES,
    "train.jit_compile": JIT_COMPILE,
    "train.verbose": VERBOSE,
}
RANGES = {  # field: (low, high, what), both ends included unless noted in `what`
    "optimizer.learning_rate": (0.0, math.inf, "a positive number"),
    "optimizer.momentum": (0.0, 1.0, "in [0, 1)"),
    "pseudo_labels.threshold": (0.0, 1.0, "in [0, 1]"),
    "pseudo_labels.ema_decay": (0.0, 1.0, "in [0, 1) (0: no weight average)"),
    "model.dropout": (0.0, 1.0, "in [0, 1)"),
}
OPEN_AT_LOW = {"optimizer.learning_rate"}
OPEN_AT_HIGH = {
    "optimizer.momentum",
    "pseudo_labels.ema_decay",
    "model.dropout",
}


def _fields(config: ml_collections.ConfigDict, names):
    """(name, value) of the dotted `names` that `config` has (optional ones may be absent)."""
    for name in names:
        value = config
        for part in name.split("."):
            if not hasattr(value, "get") or part not in value:
                break
            value = value[part]
        else:
            yield name, value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_counts(config):
    for name, value in _fields(config, POSITIVE_COUNTS):
        if not _is_int(value) or value <= 0:
            raise ConfigError(f"{name} must be positive, got {value!r}.")
    for name, value in _fields(config, COUNTS):
        if not _is_int(value) or value < 0:
            hint = " (0 labels the whole target pool)" if name == "data.shots_per_class" else ""
            raise ConfigError(f"{name} must be >= 0{hint}, got {value!r}.")
    for name, value in _fields(config, ("model.filters",)):
        if isinstance(value, str | bytes) or not all(_is_int(f) and f > 0 for f in value):
            raise ConfigError(f"{name} must be positive integers, e.g. 8,16; got {value!r}.")


def _check_names_and_ranges(config):
    for name, value in _fields(config, FLAGS):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be True or False, got {value!r}.")
    for name, value in _fields(config, CHOICES):
        if not any(value == c and type(value) is type(c) for c in CHOICES[name]):
            known = ", ".join(repr(c) for c in CHOICES[name])
            raise ConfigError(f"{name} must be one of {known}; got {value!r}.")
    for name, value in _fields(config, RANGES):
        low, high, what = RANGES[name]
        inside = _is_number(value)
        inside = inside and (value > low if name in OPEN_AT_LOW else value >= low)
        inside = inside and (value < high if name in OPEN_AT_HIGH else value <= high)
        if not inside:
            raise ConfigError(f"{name} must be {what}, got {value!r}.")


def _check_options_of(group: str, function, options: dict, what: str):
    """The keyword options a config passes to `function` (a trunk or a task) are its parameters."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        known = ", ".join(p for p in parameters if p not in ("name", "seed", "shots_per_class"))
        fields = ", ".join(f"{group}.{name}" for name in unknown)
        raise ConfigError(f"{fields}: not an option of {what} (its options: {known}).")


def check_config(config: ml_collections.ConfigDict):
    """Raises `ConfigError` naming the first field of `config` with a value the run cannot use."""
    _check_counts(config)
    _check_names_and_ranges(config)
    train = config.train
    distribute.check_strategy(train.get("distribute", "none"))
    distribute.check_precision(train.get("precision", "float32"))
    # Against the live registries, which may grow.
    model = dict(config.model)
    trunk = trunk_builder(model.pop("trunk"))
    _check_options_of("model", trunk, model, f"trunk {config.model.trunk!r}")
    if config.model.trunk == "keras_backbone":
        check_backbone(
            model.get("backbone", "MobileNetV3Small"),
            model.get("weights", "none"),
            model.get("freeze_layers", 0),
            model.get("image_size", 0),
            model.get("batch_norm_momentum", 0.0),
        )
    options = dict(config.data.get("task_options") or {})
    task = task_builder(config.data.task)
    _check_options_of("data.task_options", task, options, f"task {config.data.task!r}")
    for field in ("steps", "checkpoint_every_steps"):
        if train[field] % train.steps_per_epoch:
            raise ConfigError(
                f"train.{field} ({train[field]}) must be a multiple of train.steps_per_epoch "
                f"({train.steps_per_epoch}): training runs whole epochs and checkpoints only at "
                "epoch ends, so that a resumed run repeats the uninterrupted one exactly."
            )
    GradMixOptions.from_config(config)  # the options of the step check their own values
