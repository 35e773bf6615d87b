"""Old names read in today's: `gradmix_tf.config_renames`, and a work directory written
before the renames (`tests/data/workdir_before_renames`: a `configs/digits.py:smoke` run of
the method then called `gradmix_closed_form`, with `--config.model.filters='(4,)'
--config.model.dense_units=8 --config.train.steps=20`, stopped after its checkpoint at
step 10) resuming and evaluated again."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from configs import digits as digits_config
from gradmix_tf import benchmark, config_renames, experiment, workdir
from gradmix_tf.errors import ConfigError

OLD_WORKDIR = os.path.join(os.path.dirname(__file__), "data", "workdir_before_renames")

pytestmark = pytest.mark.usefixtures("op_determinism_kept")


def old_run_config(method: str = "closed_form"):
    """The fixture's run, asked for in today's names."""
    config = digits_config.get_config("smoke")
    config.method = method
    config.model.filters = (4,)
    config.model.dense_units = 8
    config.train.steps = 20
    return config


def test_an_old_config_reads_as_the_same_run_in_todays_names():
    with open(os.path.join(OLD_WORKDIR, "config.json")) as f:
        old = json.load(f)
    assert "gradmix" in old and old["gradmix"]["mixing"] == "gradmix"  # the old names
    new = workdir.config_as_dict(experiment.resolve_config(old_run_config()))
    added_since = {"model": ["batch_norm"]}  # fields the fixture predates (ADDED_FIELDS)
    for group, fields in added_since.items():
        for field in fields:
            assert field not in old[group] and f"{group}.{field}" in workdir.ADDED_FIELDS
            assert new[group].pop(field) == workdir.ADDED_FIELDS[f"{group}.{field}"]
    assert config_renames.upgrade(old) == new
    assert not workdir.config_differences(workdir.stored_config(OLD_WORKDIR), new)


@pytest.mark.parametrize("old, new", list(config_renames.RENAMED_METHODS.items()))
def test_an_old_method_resolves_as_its_new_name(old, new):
    """Each old method's preset, written in the old names, upgrades to the new one's."""
    config = experiment.resolve_config(old_run_config(new))
    stored = workdir.config_as_dict(config)
    stored["method"] = old
    stored["gradmix"] = stored.pop("step")
    stored["gradmix"]["mixing"] = {"closed_form": "gradmix"}.get(
        stored["gradmix"].pop("rule"), config.step.rule
    )
    stored["gradmix"]["weight_solver"] = "closed_form"
    assert config_renames.upgrade(stored) == workdir.config_as_dict(config)


def test_the_lookahead_solver_is_the_lookahead_rule_and_lists_are_renamed():
    old = {
        "method": "gradmix_no_pseudo_labels",
        "gradmix": {"mixing": "gradmix", "weight_solver": "lookahead", "alignment": "dot"},
        "benchmark": {"methods": ["gradmix", "gradmix_persistent", "joint"]},
    }
    assert config_renames.upgrade(old) == {
        "method": "closed_form_no_pseudo_labels",
        "step": {"rule": "lookahead", "alignment": "dot"},
        "benchmark": {"methods": ["gradmix", "persistent_pseudo_labels", "joint"]},
    }
    assert old["gradmix"]["mixing"] == "gradmix"  # a copy: the stored dict is unchanged


def test_a_current_config_is_left_as_it_is():
    current = workdir.config_as_dict(experiment.resolve_config(digits_config.get_config()))
    assert config_renames.upgrade(current) == current


def test_an_old_method_name_on_the_command_line_says_the_new_one():
    config = digits_config.get_config("smoke")
    config.method = "gradmix_closed_form"
    with pytest.raises(ConfigError, match="'gradmix_closed_form' is now called 'closed_form'"):
        experiment.resolve_config(config)


def test_a_workdir_written_before_the_renames_resumes_and_is_evaluated_again(tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(OLD_WORKDIR, run)
    results = experiment.train_and_evaluate(old_run_config(), run)
    assert results["method"] == "closed_form" and results["steps"] == 20
    with open(os.path.join(run, "train_log.csv")) as f:
        epochs = [line.split(",")[0] for line in f.read().splitlines()[1:]]
    assert epochs == ["0", "1"]  # epoch 0 from before the renames, epoch 1 resumed
    with open(os.path.join(run, "config.json")) as f:
        assert json.load(f)["step"]["rule"] == "closed_form"  # rewritten in today's names
    again = experiment.evaluate_workdir(run)
    assert again["step"] == 20
    assert again["target_test_accuracy"] == pytest.approx(results["target_test_accuracy"])


def test_a_benchmark_keeps_its_runs_and_results_of_the_old_names(tmp_path):
    out = str(tmp_path)
    old_run = os.path.join(out, "runs", "gradmix_closed_form", "seed_0")
    os.makedirs(old_run)
    assert benchmark.run_dir(out, "closed_form", 0) == old_run  # resumed, not trained again
    assert benchmark.run_dir(out, "closed_form", 1).endswith(os.path.join("closed_form", "seed_1"))
    assert benchmark.run_dir(out, "joint", 0).endswith(os.path.join("joint", "seed_0"))
    path = tmp_path / "results.csv"
    path.write_text(
        "method,seed,target_test_accuracy,wall_seconds,steps\n"
        "gradmix_persistent_no_pseudo_labels,0,0.5,1.0,10\njoint,0,0.4,1.0,10\n"
    )
    assert [row["method"] for row in benchmark.read_results(str(path))] == ["persistent", "joint"]
