"""Config values are checked by `experiment.resolve_config` before any data is loaded."""

from __future__ import annotations

import pytest

from configs import actions, actions_hmdb51, digits, digits_mnistm, folders, paper_digits
from gradmix_tf import experiment
from gradmix_tf.errors import ConfigError


@pytest.mark.parametrize(
    "config",
    [
        digits.get_config(),
        digits.get_config("smoke"),
        digits_mnistm.get_config(),
        actions.get_config(),
        actions.get_config("smoke"),
        actions_hmdb51.get_config(),
        folders.get_config(),
        folders.get_config("smoke"),
        paper_digits.get_config(),
    ],
    ids=[
        "digits",
        "digits_smoke",
        "digits_mnistm",
        "actions",
        "actions_smoke",
        "hmdb51",
        "folders",
        "folders_smoke",
        "paper_digits",
    ],
)
@pytest.mark.parametrize("method", experiment.METHODS)
def test_the_project_configs_pass(config, method):
    config.method = method
    experiment.resolve_config(config)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("optimizer.learning_rate", -1e-3, "optimizer.learning_rate must be a positive number"),
        ("optimizer.learning_rate", 0.0, "optimizer.learning_rate must be a positive number"),
        ("optimizer.momentum", 1.0, r"optimizer.momentum must be in \[0, 1\)"),
        ("optimizer.name", "adamw", "optimizer.name must be one of 'adam', 'sgd'"),
        ("optimizer.schedule", "linear", "optimizer.schedule must be one of 'constant'"),
        ("pseudo_labels.threshold", 1.5, r"pseudo_labels.threshold must be in \[0, 1\]"),
        ("pseudo_labels.ema_decay", 1.0, r"pseudo_labels.ema_decay must be in \[0, 1\)"),
        ("pseudo_labels.refresh_every", 0, "pseudo_labels.refresh_every must be positive"),
        ("pseudo_labels.warmup_epochs", -1, "pseudo_labels.warmup_epochs must be >= 0"),
        ("pseudo_labels.enabled", "yes", "pseudo_labels.enabled must be True or False"),
        ("step.rho_decay", 1.0, r"step.rho_decay must be in \[0, 1\)"),
        ("step.r_min", 1.5, "config.step: need 0 < r_min <= 1 <= r_max"),
        ("step.r_max", 0.5, "config.step: need 0 < r_min <= 1 <= r_max"),
        ("step.rule", "average", "step.rule must be one of 'closed_form'"),
        ("step.gradient_memory", "disk", "step.gradient_memory must be one of 'store'"),
        ("step.label_adapter", "yes", "step.label_adapter must be True or False"),
        ("step.target_weight", -1.0, "step.target_weight must be a number >= 0"),
        ("step.lookahead_step_size", -1.0, "step.lookahead_step_size must be positive"),
        ("pseudo_labels.confidence_weights", 1, "pseudo_labels.confidence_weights must be True"),
        ("step.pretrain_fraction", 1.5, r"step.pretrain_fraction must be in \[0, 1\]"),
        ("step.weight_total", "all", "weight_total must be a positive number or"),
        ("train.steps", 0, "train.steps must be positive, got 0"),
        ("train.log_every_steps", 0, "train.log_every_steps must be positive"),
        ("train.eval_batch_size", -8, "train.eval_batch_size must be positive"),
        ("train.on_nonfinite", "ignore", "train.on_nonfinite must be one of 'stop', 'skip'"),
        ("train.distribute", "horovod", "train.distribute must be one of 'none'"),
        ("train.precision", "float16", "train.precision must be one of 'float32'"),
        ("train.jit_compile", "yes", "train.jit_compile must be one of 'auto', 'on', 'off'"),
        ("train.verbose", 3, "train.verbose must be one of"),
        ("data.shots_per_class", -1, "data.shots_per_class must be >= 0"),
        ("data.max_per_class", -1, "data.max_per_class must be >= 0"),
        ("data.task", "digitz", "data.task must be one of 'digits'"),
        ("seed", -1, "seed must be >= 0"),
        ("model.dropout", 1.0, r"model.dropout must be in \[0, 1\)"),
        ("model.filters", ("abc",), "model.filters must be positive integers"),
        ("model.factorised", True, "model.factorised: not an option of trunk 'small_cnn'"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_field(field, value, message):
    config = digits.get_config("smoke")
    group, _, name = field.rpartition(".")
    if group:  # a new group: a value of another type than the config's (a config file's typo)
        config[group] = {**config[group].to_dict(), name: value}
    else:
        config[name] = value
    with pytest.raises(ConfigError, match=message):
        experiment.resolve_config(config)


def test_a_task_option_the_task_does_not_take_is_named():
    config = digits_mnistm.get_config()
    config.data.task_options = {"data_dirr": "/tmp"}
    with pytest.raises(ConfigError, match="data.task_options.data_dirr: not an option of task"):
        experiment.resolve_config(config)


def test_config_errors_are_value_errors():
    assert issubclass(ConfigError, ValueError)
