"""End-to-end tests of the launchers (`launch/train.py`, `evaluate.py`, `predict.py`).

The session's one smoke run (`configs/digits.py:smoke`, 30 steps, the `smoke_workdir`
fixture of tests/conftest.py, trained in process by `experiment.train_and_evaluate`, what
`launch.train` runs) is shared by every test of the module. Each launcher runs once as a
subprocess, as a user would run it; the other subprocess runs are marked slow.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from gradmix_tf.tasks import digits
from tests.workdir_testing import file_hashes, output_of
from tests.workdir_testing import run_launcher as run

SMOKE_STEPS = 30  # configs/digits.py:smoke's train.steps
SOURCE_AND_PSEUDO_LABEL_STREAMS = {*digits.SOURCE_STREAMS, "pseudo_labels"}


@pytest.fixture(scope="module")
def workdir(smoke_workdir) -> str:
    """The work directory of one finished smoke run (read only)."""
    return smoke_workdir


@pytest.fixture(scope="module")
def results(workdir) -> dict:
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[str]:
    """A 50x40 grey PNG and a 24x36 colour JPEG of target test digits."""
    directory = tmp_path_factory.mktemp("images")
    test_images = np.concatenate(
        [
            x
            for x, _ in digits.digits_task(shots_per_class=None, max_per_class=1)
            .test_dataset(10)
            .as_numpy_iterator()
        ]
    )
    pixels = (test_images * 255).round().astype(np.uint8)  # [N, 32, 32, 3]
    png = str(directory / "a.png")
    Image.fromarray(pixels[0].mean(axis=-1).astype(np.uint8), mode="L").resize((50, 40)).save(png)
    jpeg = str(directory / "b.jpg")
    Image.fromarray(pixels[1], mode="RGB").resize((36, 24)).save(jpeg)
    return [png, jpeg]


def test_train_writes_the_workdir(workdir):
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    assert config["method"] == "gradmix"
    assert config["train"]["steps"] == SMOKE_STEPS
    assert os.path.isfile(os.path.join(workdir, "checkpoints", "checkpoint"))
    assert glob.glob(os.path.join(workdir, "checkpoints", f"ckpt-{SMOKE_STEPS}.index"))
    assert glob.glob(
        os.path.join(workdir, "tensorboard", "**", "events.out.tfevents.*"), recursive=True
    )
    assert os.path.isfile(os.path.join(workdir, "train_log.csv"))
    assert os.path.isfile(os.path.join(workdir, "export", "saved_model.pb"))
    with open(os.path.join(workdir, "export", "gradmix_export.json")) as f:
        metadata = json.load(f)
    assert metadata["class_names"] == list(digits.TARGET_CLASS_NAMES)
    assert metadata["input_shape"] == list(digits.IMAGE_SHAPE)


def test_results_json(results):
    assert 0.0 <= results["target_test_accuracy"] <= 1.0
    assert results["steps"] == SMOKE_STEPS
    assert set(results["mixing_weights"]) == SOURCE_AND_PSEUDO_LABEL_STREAMS
    assert set(results["mixing_weights_per_layer"]) == SOURCE_AND_PSEUDO_LABEL_STREAMS
    assert 0.0 <= results["pseudo_label_acceptance"] <= 1.0
    assert 0.0 <= results["pseudo_label_precision"] <= 1.0


def test_mixing_weights_history(workdir, results):
    with np.load(os.path.join(workdir, "mixing_weights.npz")) as history:
        steps, weights = history["steps"], history["weights"]
        stream_names = history["stream_names"].tolist()
    assert set(stream_names) == SOURCE_AND_PSEUDO_LABEL_STREAMS
    assert steps[-1] == SMOKE_STEPS
    assert weights.shape[:2] == (len(steps), len(stream_names))
    last = {name: float(weights[-1, s].mean()) for s, name in enumerate(stream_names)}
    assert last == pytest.approx(results["mixing_weights"], abs=1e-6)


def test_evaluate_reproduces_the_test_accuracy(workdir, results, tmp_path):
    copy = str(tmp_path / "run")  # evaluate writes evaluation.json into the work directory
    shutil.copytree(workdir, copy)
    completed = run("launch.evaluate", f"--workdir={copy}")
    assert completed.returncode == 0, output_of(completed)
    assert os.path.isfile(os.path.join(copy, "evaluation.json"))
    evaluation = json.loads(completed.stdout)
    assert evaluation["step"] == SMOKE_STEPS
    assert evaluation["target_test_accuracy"] == pytest.approx(
        results["target_test_accuracy"], abs=1e-6
    )


def test_predict_prints_a_class_per_file(workdir, image_files):
    completed = run("launch.predict", f"--model={workdir}/export", *image_files)
    assert completed.returncode == 0, output_of(completed)
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == len(image_files), output_of(completed)
    for line, path in zip(lines, image_files):
        prefix, _, ranked = line.partition(": ")
        assert prefix == path
        name, _, probability = ranked.partition(" (")
        assert name in digits.TARGET_CLASS_NAMES
        assert 0.0 <= float(probability.rstrip(")")) <= 1.0


@pytest.mark.slow  # a fresh process each; predict_files's errors are tested in test_export
@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_predict_names_an_unreadable_file(workdir, image_files, tmp_path, problem):
    bad = tmp_path / "x.png"
    if problem == "corrupt":
        bad.write_bytes(np.random.default_rng(0).bytes(256))
    completed = run("launch.predict", f"--model={workdir}/export", image_files[0], str(bad))
    assert completed.returncode != 0, output_of(completed)
    assert str(bad) in completed.stderr, output_of(completed)


def test_rerun_of_a_finished_run_reports_it_and_writes_nothing(workdir, results, tmp_path):
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    before = file_hashes(copy)
    completed = run("launch.train", "--config=configs/digits.py:smoke", f"--workdir={copy}")
    log = output_of(completed)
    assert completed.returncode == 0, log
    assert f"{copy} holds a finished run ({SMOKE_STEPS} steps" in completed.stderr, log
    assert "Epoch " not in log and "Resuming" not in log, log  # nothing trained or restored
    for notice in ("cuInit", "oneDNN", "shuffle=True"):  # quiet by default
        assert notice not in completed.stderr, log
    assert file_hashes(copy) == before  # results.json (train_seconds) and export untouched
    assert json.loads(completed.stdout) == results
