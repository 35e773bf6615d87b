"""Tests of `python -m launch.prepare`: building from an npz, and failing fast with no data."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from absl import app, flags
from absl.testing import flagsaver

from gradmix_tf import datasets
from launch import prepare

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def parsed_flags():
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _tiny_npz(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8),
        "y_train": np.arange(20) % 10,
        "x_test": rng.integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8),
        "y_test": np.arange(10),
    }
    np.savez(path, **arrays)
    return arrays


def test_prepare_from_npz_writes_manual_files_builds_and_prints_sizes(tmp_path, capsys):
    arrays = _tiny_npz(tmp_path / "syn.npz")
    with flagsaver.flagsaver(
        dataset="syn_digits",
        from_npz=os.fspath(tmp_path / "syn.npz"),
        manual_dir=os.fspath(tmp_path / "manual"),
        data_dir=os.fspath(tmp_path / "data"),
    ):
        prepare.main(["prepare"])
    out = capsys.readouterr().out
    assert "syn_digits: test 10, train 20" in out
    assert (tmp_path / "manual" / "syn_digits" / "synth_train_32x32.mat").exists()
    examples = datasets.load_examples("syn_digits", "train", data_dir=tmp_path / "data")
    np.testing.assert_array_equal(examples.images, arrays["x_train"])


def test_prepare_from_npz_needs_a_manual_dir(tmp_path):
    with flagsaver.flagsaver(dataset="usps", from_npz=os.fspath(tmp_path / "x.npz")):
        with pytest.raises(app.UsageError, match="--manual_dir"):
            prepare.main(["prepare"])


def test_prepare_from_npz_of_a_dataset_without_a_writer(tmp_path):
    _tiny_npz(tmp_path / "syn.npz")
    with flagsaver.flagsaver(
        dataset="mnist",
        from_npz=os.fspath(tmp_path / "syn.npz"),
        manual_dir=os.fspath(tmp_path / "manual"),
    ):
        with pytest.raises(ValueError, match="no npz writer for dataset 'mnist'"):
            prepare.main(["prepare"])


def test_prepare_of_missing_files_raises_the_message(tmp_path):
    with flagsaver.flagsaver(
        dataset="mnist_m",
        manual_dir=os.fspath(tmp_path / "manual"),
        data_dir=os.fspath(tmp_path / "data"),
    ):
        with pytest.raises(datasets.DatasetNotReadyError, match="mnist_m_test_labels.txt"):
            prepare.main(["prepare"])  # launch.errors.run makes it one line and exit code 2


@pytest.mark.slow  # a fresh process imports TensorFlow: ~10-20 s
def test_prepare_command_with_no_manual_files_stops_within_a_minute(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.fspath(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    start = time.monotonic()
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.prepare",
            "--dataset=usps",
            f"--manual_dir={tmp_path / 'manual'}",
            f"--data_dir={tmp_path / 'data'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - start < 60
    assert completed.returncode != 0
    assert "usps.h5" in completed.stderr and os.fspath(tmp_path / "manual") in completed.stderr
