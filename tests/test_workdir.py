"""A work directory records one experiment (`gradmix_tf.workdir`, `experiment.train_and_evaluate`).

In process, on copies of the session's smoke run (tests/conftest.py): a changed config is
refused before anything is written, a finished run is reported and not rewritten,
`force_eval` keeps `train_seconds`, `overwrite` clears the run files. The kill -9 case runs
the launcher and is slow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from configs import digits as digits_config
from gradmix_tf import experiment, workdir
from gradmix_tf.errors import (
    CheckpointError,
    NotAWorkdirError,
    TrainingStoppedError,
    WorkdirError,
)
from tests.workdir_testing import (
    FINISHED_RUN_FILES,
    REPO_ROOT,
    file_hashes,
    output_of,
    run_launcher,
)

SMOKE = "configs/digits.py:smoke"


def smoke_config(**overrides):
    config = digits_config.get_config("smoke")
    for field, value in overrides.items():
        group, _, name = field.rpartition(".")
        (config[group] if group else config)[name] = value
    return config


# Runs here turn on op determinism for the process: off again after each test.
pytestmark = pytest.mark.usefixtures("op_determinism_kept")


@pytest.fixture
def finished_copy(smoke_workdir, tmp_path) -> str:
    copy = str(tmp_path / "run")
    shutil.copytree(smoke_workdir, copy)
    return copy


def sha256_of_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


# ------------------------------------------------------------------- comparison
def test_differences_name_dotted_fields_top_level_first():
    stored = {"train": {"steps": 30, "verbose": 2}, "seed": 0, "model": {"filters": [8, 16]}}
    config = {"train": {"steps": 20, "verbose": 0}, "seed": 3, "model": {"filters": [8]}}
    assert workdir.config_differences(stored, config) == [
        ("seed", 0, 3),
        ("train.steps", 30, 20),
        ("model.filters", [8, 16], [8]),
    ]
    text = workdir.describe_differences(workdir.config_differences(stored, config), limit=2)
    assert text == "seed 0 -> 3, train.steps 30 -> 20 and 1 more"


def test_fields_that_do_not_change_the_result_are_not_compared():
    stored = {"train": {"verbose": 2, "distribute": "none"}, "benchmark": {"seeds": 5}}
    config = {"train": {"verbose": 0, "distribute": "mirrored"}, "benchmark": {"seeds": 2}}
    assert workdir.config_differences(stored, config) == []
    added = workdir.config_differences({"data": {}}, {"data": {"task_options": {"a": 1}}})
    assert workdir.describe_differences(added) == "data.task_options.a (absent) -> 1"


# -------------------------------------------------------- train_and_evaluate
@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"seed": 3}, "seed 0 -> 3"),
        ({"optimizer.learning_rate": 0.01}, "optimizer.learning_rate 0.001 -> 0.01"),
        ({"method": "joint"}, "method 'gradmix' -> 'joint'"),
    ],
)
def test_a_changed_config_is_refused_and_nothing_changes(finished_copy, overrides, named):
    before = file_hashes(finished_copy)
    with pytest.raises(WorkdirError) as raised:
        experiment.train_and_evaluate(smoke_config(**overrides), finished_copy)
    message = str(raised.value)
    assert f"{finished_copy} holds a run of another config ({named}" in message
    assert "another --workdir" in message and "--overwrite" in message
    assert file_hashes(finished_copy) == before


def test_a_changed_config_names_a_few_fields_then_counts_the_rest(finished_copy):
    config = smoke_config(**{"seed": 3, "method": "joint", "optimizer.learning_rate": 0.01})
    with pytest.raises(
        # joint also sets step.rule, step.alignment, step.adaptive_learning_rate and
        # pseudo-labels off: 7 fields differ, the first 4 named
        WorkdirError,
        match=r"\(method 'gradmix' -> 'joint', seed 0 -> 3, .* and 3 more\)",
    ):
        experiment.train_and_evaluate(config, finished_copy)


def test_a_finished_run_is_reported_and_not_rewritten(finished_copy, caplog):
    before = file_hashes(finished_copy)
    with caplog.at_level(logging.INFO, logger="absl"):
        results = experiment.train_and_evaluate(
            smoke_config(**{"train.verbose": 0}),
            finished_copy,  # verbose: not compared
        )
    assert results == read_json(os.path.join(finished_copy, "results.json"))
    assert f"{finished_copy} holds a finished run (30 steps" in caplog.text
    assert file_hashes(finished_copy) == before


def test_force_eval_evaluates_again_and_keeps_train_seconds(finished_copy):
    stored = read_json(os.path.join(finished_copy, "results.json"))
    checkpoints = file_hashes(os.path.join(finished_copy, "checkpoints"))
    results = experiment.train_and_evaluate(smoke_config(), finished_copy, force_eval=True)
    assert results == read_json(os.path.join(finished_copy, "results.json"))
    assert results["train_seconds"] == stored["train_seconds"]
    assert results["target_test_accuracy"] == pytest.approx(stored["target_test_accuracy"])
    assert file_hashes(os.path.join(finished_copy, "checkpoints")) == checkpoints


def test_a_damaged_last_checkpoint_is_not_a_finished_run(finished_copy):
    assert workdir.finished_results(finished_copy, 30) is not None
    with open(
        os.path.join(finished_copy, "checkpoints", "ckpt-30.data-00000-of-00001"), "r+b"
    ) as f:
        f.truncate(10)
    assert workdir.finished_results(finished_copy, 30) is None
    assert workdir.finished_results(finished_copy, 40) is None  # another step budget


def test_overwrite_clears_the_run_files_only(finished_copy):
    with open(os.path.join(finished_copy, "notes.txt"), "w") as f:
        f.write("mine")
    workdir.clear_run_files(finished_copy)
    assert os.listdir(finished_copy) == ["notes.txt"]


@pytest.mark.slow  # trains the smoke run again (~10 s)
def test_overwrite_trains_the_new_config_afresh(finished_copy):
    results = experiment.train_and_evaluate(smoke_config(seed=1), finished_copy, overwrite=True)
    assert results["seed"] == 1 and results["steps"] == 30
    assert read_json(os.path.join(finished_copy, "config.json"))["seed"] == 1


def test_a_file_or_an_unwritable_path_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(WorkdirError, match="is a file, not a directory"):
        experiment.train_and_evaluate(smoke_config(), str(path))
    with pytest.raises(WorkdirError, match="cannot write to the work directory .*file/run"):
        experiment.train_and_evaluate(smoke_config(), str(path / "run"))
    assert path.read_text() == "x"


def test_an_unreadable_config_json_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(WorkdirError, match="config.json"):
        experiment.train_and_evaluate(smoke_config(), str(tmp_path))


def test_evaluate_needs_a_work_directory_with_a_checkpoint(smoke_workdir, tmp_path):
    with pytest.raises(NotAWorkdirError, match="does not exist"):
        experiment.evaluate_workdir(str(tmp_path / "missing"))
    with pytest.raises(NotAWorkdirError, match="has no config.json"):
        experiment.evaluate_workdir(str(tmp_path))
    shutil.copy(os.path.join(smoke_workdir, "config.json"), tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        experiment.evaluate_workdir(str(tmp_path))


def test_a_diverging_run_stops_with_a_training_stopped_error(tmp_path):
    config = smoke_config(**{"optimizer.learning_rate": 1e30, "train.verbose": 0})
    with pytest.raises(TrainingStoppedError, match=r"^Non-finite \(NaN or Inf\) loss .* step 2 "):
        experiment.train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "results.json")


def test_the_advice_of_a_non_finite_stop_can_be_followed(tmp_path, caplog):
    """It says: rerun with on_nonfinite=skip to resume; a lower learning rate is another run.
    Skipping, every batch after the first step is non-finite: a dead run, which stops."""
    run = str(tmp_path / "run")
    diverging = {"optimizer.learning_rate": 1e30, "train.verbose": 0}
    with pytest.raises(TrainingStoppedError) as stopped:
        experiment.train_and_evaluate(smoke_config(**diverging), run)
    assert "rerun with --config.train.on_nonfinite=skip to resume from it" in str(stopped.value)
    assert "a lower optimizer.learning_rate trains another run (another --workdir, or " in str(
        stopped.value
    )
    skipping = smoke_config(**diverging, **{"train.on_nonfinite": "skip"})
    with (
        caplog.at_level(logging.INFO, logger="absl"),
        pytest.raises(TrainingStoppedError) as dead,
    ):
        experiment.train_and_evaluate(skipping, run)  # resumed, not refused
    assert "train.on_nonfinite 'stop' -> 'skip' (fields that may change on resume)" in caplog.text
    assert "Epoch 1: 9 of 10 batches skipped" in caplog.text
    assert str(dead.value).startswith(
        "Every batch of epoch 2 (training steps 11-20) had a non-finite (NaN or Inf) loss or "
        "gradient and was skipped: the model no longer trains, so the run stops"
    )
    assert read_json(os.path.join(run, "config.json"))["train"]["on_nonfinite"] == "skip"
    assert not os.path.exists(os.path.join(run, "results.json"))
    assert not os.path.exists(os.path.join(run, "export"))
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == [
        "checkpoint",
        "ckpt-10.data-00000-of-00001",
        "ckpt-10.index",
    ]
    with pytest.raises(WorkdirError, match=r"optimizer.learning_rate 1e\+30 -> 0.001"):
        experiment.train_and_evaluate(smoke_config(**{"train.on_nonfinite": "skip"}), run)


def test_results_count_the_skipped_batches(smoke_workdir):
    assert read_json(os.path.join(smoke_workdir, "results.json"))["nonfinite_skipped"] == 0


# ------------------------------------------------------ directories not ours
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_directory_without_config_json_is_refused_and_kept(tmp_path, overwrite):
    mine = tmp_path / "mine"
    (mine / "export").mkdir(parents=True)
    (mine / "export" / "model.bin").write_text("mine")
    (mine / "results.json").write_text("{}")
    before = file_hashes(str(mine))
    with pytest.raises(WorkdirError) as raised:
        experiment.train_and_evaluate(smoke_config(), str(mine), overwrite=overwrite)
    assert str(raised.value).startswith(
        f"{mine} holds a run's files (export, results.json) but no config.json"
    )
    assert "nothing in it is resumed, overwritten or deleted" in str(raised.value)
    assert file_hashes(str(mine)) == before and sorted(os.listdir(mine)) == sorted(
        ["export", "results.json"]
    )


def test_a_directory_of_other_files_is_not_a_work_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(WorkdirError, match=r"is not empty \(notes.txt\) and has no config.json"):
        experiment.train_and_evaluate(smoke_config(), str(tmp_path), overwrite=True)
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_a_run_without_its_config_json_is_not_resumed_by_another_config(finished_copy):
    os.remove(os.path.join(finished_copy, "config.json"))
    before = file_hashes(finished_copy)
    with pytest.raises(WorkdirError, match="holds a run's files .*checkpoints.* but no config"):
        experiment.train_and_evaluate(smoke_config(seed=5), finished_copy)
    assert file_hashes(finished_copy) == before


def test_overwrite_keeps_config_json_until_the_new_one_is_written(finished_copy):
    with open(os.path.join(finished_copy, "notes.txt"), "w") as f:
        f.write("mine")
    workdir.clear_run_files(finished_copy, keep=("config.json",))
    assert sorted(os.listdir(finished_copy)) == ["config.json", "notes.txt"]


# ---------------------------------------------------------------------- lock
def test_a_directory_in_use_is_refused_and_kept(finished_copy):
    held, _ = workdir.acquire_lock(finished_copy)  # as another run holds it
    try:
        before = file_hashes(finished_copy)
        with pytest.raises(WorkdirError) as raised:
            experiment.train_and_evaluate(smoke_config(seed=1), finished_copy, overwrite=True)
        assert str(raised.value) == (
            f"{finished_copy} is in use by another run (process {os.getpid()}, "
            f"{finished_copy}/run.lock): wait for it to end, or use another --workdir."
        )
        assert file_hashes(finished_copy) == before
    finally:
        workdir.release_lock(finished_copy, held)
    assert not os.path.exists(os.path.join(finished_copy, "run.lock"))


def test_the_lock_of_a_process_that_no_longer_runs_is_taken_over(tmp_path, caplog):
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead = ended.stdout.strip()
    (tmp_path / "run.lock").write_text(f"{dead}\n")
    held, left_by = workdir.acquire_lock(str(tmp_path))
    assert left_by == dead
    with caplog.at_level(logging.WARNING, logger="absl"):
        workdir.log_taken_over(str(tmp_path), left_by)
    assert f"run.lock was left by process {dead}, which no longer runs: taken over" in caplog.text
    assert (tmp_path / "run.lock").read_text() == f"{os.getpid()}\n"
    workdir.release_lock(str(tmp_path), held)
    assert os.listdir(tmp_path) == []


def test_a_finished_run_with_a_stale_lock_is_reported(finished_copy):
    with open(os.path.join(finished_copy, "run.lock"), "w") as f:
        f.write("999999999\n")  # no such process
    results = experiment.train_and_evaluate(smoke_config(), finished_copy)
    assert results == read_json(os.path.join(finished_copy, "results.json"))
    assert not os.path.exists(os.path.join(finished_copy, "run.lock"))


def test_a_data_error_leaves_no_directory_behind(tmp_path):
    from configs import folders

    config = folders.get_config("smoke")
    config.data.task_options.root = str(tmp_path / "no_tree")
    with pytest.raises(ValueError, match="no_tree"):
        experiment.train_and_evaluate(config, str(tmp_path / "run"))
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------ finished runs
def test_a_run_without_a_complete_export_is_not_finished(finished_copy):
    assert workdir.finished_results(finished_copy, 30) is not None
    os.remove(os.path.join(finished_copy, "export", "saved_model.pb"))
    assert workdir.finished_results(finished_copy, 30) is None
    shutil.rmtree(os.path.join(finished_copy, "export"))
    assert workdir.finished_results(finished_copy, 30) is None


def test_an_interrupted_export_is_written_again(finished_copy):
    """A kill after results.json but before the export was complete (written in this
    order before): the rerun evaluates and exports, with the same results."""
    stored = read_json(os.path.join(finished_copy, "results.json"))
    checkpoints = file_hashes(os.path.join(finished_copy, "checkpoints"))
    shutil.rmtree(os.path.join(finished_copy, "export", "variables"))
    results = experiment.train_and_evaluate(smoke_config(), finished_copy)
    assert results["target_test_accuracy"] == stored["target_test_accuracy"]
    assert workdir.export_is_complete(os.path.join(finished_copy, "export"))
    assert file_hashes(os.path.join(finished_copy, "checkpoints")) == checkpoints
    assert set(os.listdir(finished_copy)) == FINISHED_RUN_FILES


def test_write_directory_replaces_whole_or_not_at_all(tmp_path):
    path = str(tmp_path / "export")

    def write(content):
        def writer(target):
            os.makedirs(target)
            with open(os.path.join(target, "a"), "w") as f:
                f.write(content)
                if content == "killed":
                    raise KeyboardInterrupt  # stopped midway

        return writer

    workdir.write_directory(path, write("one"))
    with pytest.raises(KeyboardInterrupt):
        workdir.write_directory(path, write("killed"))
    assert open(os.path.join(path, "a")).read() == "one"
    workdir.write_directory(path, write("two"))
    assert open(os.path.join(path, "a")).read() == "two"
    assert os.listdir(tmp_path) == ["export"]


def test_non_finite_numbers_are_written_as_null(tmp_path):
    path = str(tmp_path / "results.json")
    workdir.write_json(path, {"loss": float("nan"), "w": {"a": float("inf"), "b": [1.5]}})
    assert read_json(path) == {"loss": None, "w": {"a": None, "b": [1.5]}}
    assert "NaN" not in open(path).read()


# ------------------------------------------------------------- kill -9, slow
@pytest.mark.slow
def test_a_killed_run_resumed_with_another_method_is_refused_and_kept(tmp_path):
    run_dir = str(tmp_path / "run")
    command = [sys.executable, "-m", "launch.train", f"--config={SMOKE}", f"--workdir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
        try:
            state = os.path.join(run_dir, "checkpoints", "checkpoint")
            deadline = time.monotonic() + 300
            while not (os.path.exists(state) and '"ckpt-10"' in open(state).read()):
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=60)
    before = file_hashes(run_dir)
    assert "config.json" in before and "results.json" not in before
    # The kill left its lock, which the next run takes over and lets go: the rest stays.
    assert before.pop("run.lock") == sha256_of_text(f"{process.pid}\n")

    refused = run_launcher(
        "launch.train", f"--config={SMOKE}", f"--workdir={run_dir}", "--config.method=joint"
    )
    assert refused.returncode == 2, output_of(refused)
    (line,) = refused.stderr.splitlines()
    assert line.startswith(f"error: {run_dir} holds a run of another config (method 'gradmix'")
    assert file_hashes(run_dir) == before

    evaluated = run_launcher("launch.evaluate", f"--workdir={run_dir}")
    assert evaluated.returncode == 0, output_of(evaluated)
    assert json.loads(evaluated.stdout)["step"] >= 10
