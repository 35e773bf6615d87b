"""A smoke run killed with SIGKILL at any point of its life, then run again, ends as if never killed.

For each point of `tests/fault_points.py` (data loading, model building, config.json,
training steps, checkpoint writes before, midway and after, pseudo-labels, logs,
evaluation, the export, results.json) and at a few random times, `launch.train` on
`configs/digits.py:smoke` is killed there (SIGKILL, no cleanup), then run again in
process. Every time the rerun must end with the target test accuracy of an uninterrupted
run (the session's smoke run), in results.json too, with a complete export that loads and
classifies, and nothing left behind by the kill (no lock, no partial file). About 4
minutes on 2 CPU cores (~11 s a point): marked slow.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from configs import digits as digits_config
from gradmix_tf import experiment, workdir
from gradmix_tf.export.saved_model import load_exported
from tests.fault_points import POINTS
from tests.workdir_testing import FINISHED_RUN_FILES, REPO_ROOT

SMOKE = "--config=configs/digits.py:smoke"
RANDOM_KILLS = 2  # kills at random times, besides the named points


# Runs here turn on op determinism for the process: off again after each test.
pytestmark = pytest.mark.usefixtures("op_determinism_kept")


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}


def killed_at(point: str, run: str, log_path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tests.fault_points", point, SMOKE, f"--workdir={run}"]
    with open(log_path, "w") as log:
        return subprocess.run(
            command, cwd=REPO_ROOT, env=environment(), stdout=log, stderr=log, timeout=300
        )


def killed_after(seconds: float, run: str, log_path) -> int:
    command = [sys.executable, "-m", "launch.train", SMOKE, f"--workdir={run}"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=environment(), stdout=log, stderr=log
        )
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=60)
    return process.returncode


def assert_finished_as_uninterrupted(run: str, reference: dict):
    """The rerun of a killed run: in process, to the uninterrupted run's results."""
    keras.backend.clear_session()
    results = experiment.train_and_evaluate(digits_config.get_config("smoke"), run)
    assert results["target_test_accuracy"] == reference["target_test_accuracy"]
    assert results["steps"] == reference["steps"]
    with open(os.path.join(run, "results.json")) as f:
        stored = json.load(f)
    assert stored["target_test_accuracy"] == reference["target_test_accuracy"]
    assert (
        set(os.listdir(run)) == FINISHED_RUN_FILES
    )  # no lock, no partial file, nothing moved aside
    assert workdir.export_is_complete(os.path.join(run, "export"))
    serve, metadata = load_exported(os.path.join(run, "export"))
    probabilities = np.asarray(serve(np.full([2, *metadata["input_shape"]], 0.5, np.float32)))
    assert probabilities.shape == (2, len(metadata["class_names"]))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.fixture(scope="module")
def reference(smoke_workdir) -> dict:
    with open(os.path.join(smoke_workdir, "results.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_a_run_killed_at_any_point_ends_as_if_never_killed(reference, tmp_path):
    reached = {}
    for index, point in enumerate(POINTS):
        run = str(tmp_path / f"run_{index}")
        log = tmp_path / f"killed_{index}.log"
        completed = killed_at(point, run, log)
        assert completed.returncode == -signal.SIGKILL, f"{point}: {log.read_text()}"
        reached[point] = sorted(os.listdir(run)) if os.path.isdir(run) else []
        assert_finished_as_uninterrupted(run, reference)
    # The kills left the directories a run leaves at those points.
    assert reached["data:start"] == ["run.lock"]
    assert reached["config:before"] == ["config.json.partial", "run.lock"]
    assert "tensorboard" in reached["train:3"] and "checkpoints" not in reached["train:3"]
    assert "results.json" not in reached["evaluate:after"]
    assert "export.partial" in reached["export:rename"] and "export" not in reached["export:rename"]
    assert "results.json.partial" in reached["results:before"]
    assert "export" in reached["results:before"] and "results.json" not in reached["results:before"]
    assert "results.json" in reached["results:after"]


@pytest.mark.slow
def test_a_run_killed_at_random_times_ends_as_if_never_killed(reference, tmp_path):
    times = random.Random(0).sample(range(40, 120), RANDOM_KILLS)  # tenths of a second
    for index, tenths in enumerate(sorted(times)):
        run = str(tmp_path / f"run_{index}")
        started = time.monotonic()
        code = killed_after(tenths / 10, run, tmp_path / f"killed_{index}.log")
        assert code in (0, -signal.SIGKILL), code
        assert time.monotonic() - started < 120
        assert_finished_as_uninterrupted(run, reference)
