"""Helpers of the work-directory and launcher-error tests: file hashes, launcher runs."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FINISHED_RUN_FILES = {
    "checkpoints",
    "config.json",
    "export",
    "mixing_weights.npz",
    "results.json",
    "tensorboard",
    "train_log.csv",
    # The smoke task's sources (MNIST 0-4, UCI 5-9) predict through label adapters.
    "label_relation_mnist_0_4.png",
    "label_relation_uci_digits_5_9.png",
}
"""What the work directory of a finished smoke run holds, and nothing else."""


def file_hashes(directory: str) -> dict[str, str]:
    """The SHA-256 of every file under `directory`, by relative path."""
    hashes = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                hashes[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return hashes


def run_launcher(
    module: str, *args: str, timeout: float = 300, **env
) -> subprocess.CompletedProcess:
    """Runs `python -m module args...` from the repository root, as a user would
    (no TF_CPP_MIN_LOG_LEVEL of the test session: the launcher's own defaults)."""
    environment = {**os.environ, "PYTHONPATH": REPO_ROOT, **env}
    environment.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def output_of(completed: subprocess.CompletedProcess) -> str:
    return f"exit {completed.returncode}\n--- stdout\n{completed.stdout}\n--- stderr\n{completed.stderr}"
