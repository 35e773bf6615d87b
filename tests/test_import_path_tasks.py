"""Tasks given by import path (`config.data.task = "package.module:function"`), in process and
through `launch.train`; the helper tasks are in tests/task_helpers.py."""

from __future__ import annotations

import json
import os

import pytest

from configs import digits
from gradmix_tf import experiment
from gradmix_tf.data.streams import MultiStreamData
from gradmix_tf.errors import ConfigError
from gradmix_tf.tasks import load_task, task_builder
from tests import task_helpers
from tests.workdir_testing import output_of, run_launcher

TASK = "tests.task_helpers:shapes_task"


def test_a_task_of_an_import_path_gets_the_arguments_of_every_task():
    data = load_task(TASK, seed=3, shots_per_class=2, max_per_class=6, per_class=7)
    assert isinstance(data, MultiStreamData)
    assert data.target_class_names == task_helpers.TARGET_CLASSES
    assert [s.name for s in data.sources] == ["shades"]
    assert data.target.labelled.size == 6 and data.target.unlabelled.size == 12  # 6 a class
    assert task_builder(TASK) is task_helpers.shapes_task


def test_the_config_checks_accept_it_and_check_its_options():
    config = digits.get_config("smoke")
    config.data.task = TASK
    experiment.resolve_config(config)
    config.data.task_options = {"per_clas": 4}
    with pytest.raises(ConfigError, match=r"data.task_options.per_clas: not an option of task"):
        experiment.resolve_config(config)


@pytest.mark.parametrize(
    "task, message",
    [
        ("tests.task_helpers", "data.task must be one of 'digits'"),
        ("tests.no_such_module:shapes_task", "cannot import module 'tests.no_such_module'"),
        ("tests.task_helpers:no_such_task", "module 'tests.task_helpers' has no function"),
        ("tests.task_helpers:NOT_CALLABLE", "has no function 'NOT_CALLABLE'"),
        ("tests/task_helpers.py:shapes_task", "is not an import path"),
    ],
)
def test_a_bad_path_says_what_to_write(task, message):
    config = digits.get_config("smoke")
    config.data.task = task
    with pytest.raises(ConfigError) as error:
        experiment.resolve_config(config)
    assert message in str(error.value)
    assert "package.module:function" in str(error.value)


def test_a_function_returning_something_else_says_what_to_return():
    with pytest.raises(ConfigError) as error:
        load_task("tests.task_helpers:not_a_task", seed=0, shots_per_class=5)
    message = str(error.value)
    assert "returned dict, not a MultiStreamData" in message
    assert "return MultiStreamData(sources, target)" in message


@pytest.mark.slow  # a fresh process (TensorFlow imports, 30 training steps): ~20 s
def test_train_launcher_runs_a_task_of_an_import_path(tmp_path):
    workdir = str(tmp_path / "run")
    completed = run_launcher(
        "launch.train",
        "--config=configs/digits.py:smoke",
        f"--config.data.task={TASK}",
        f"--workdir={workdir}",
    )
    assert completed.returncode == 0, output_of(completed)
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    assert results["task"] == TASK and results["steps"] == 30
    assert set(results["mixing_weights"]) == {"shades", "pseudo_labels"}
    with open(os.path.join(workdir, "export", "gradmix_export.json")) as f:
        metadata = json.load(f)
    assert metadata["class_names"] == list(task_helpers.TARGET_CLASSES)
    assert metadata["input_shape"] == list(task_helpers.IMAGE_SHAPE)


@pytest.mark.slow  # a fresh process: ~10 s
def test_train_launcher_with_a_bad_path_is_one_line(tmp_path):
    completed = run_launcher(
        "launch.train",
        "--config=configs/digits.py:smoke",
        "--config.data.task=tests.task_helper:shapes_task",
        f"--workdir={tmp_path / 'run'}",
    )
    assert completed.returncode == 2, output_of(completed)
    (line,) = completed.stderr.strip().splitlines()
    assert line.startswith("error: data.task 'tests.task_helper:shapes_task': cannot import")
    assert "package.module:function" in line
    assert not os.path.exists(tmp_path / "run" / "config.json")
