"""Test configuration: quiet logs, two logical CPUs, a seed per test, one shared smoke run.

TensorFlow is configured here, before any test module runs an op: the CPU is split into
two logical devices (`/cpu:0`, `/cpu:1`) so that two-replica `MirroredStrategy` tests run
in this process. One-device code still runs on `/cpu:0`.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.framework import config as tf_config  # noqa: E402

tf.get_logger().setLevel("ERROR")

_CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_CPU, [tf.config.LogicalDeviceConfiguration()] * 2)

TWO_CPUS = ["/cpu:0", "/cpu:1"]
SMOKE_CONFIG = "configs/digits.py:smoke"


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state (Python, NumPy, TensorFlow, Keras)."""
    keras.utils.set_random_seed(0)


@pytest.fixture
def op_determinism_kept():
    """For tests whose runs turn on op determinism (train.deterministic) for the process:
    it is turned off again after the test, as the session's smoke run does (Keras silently
    compiles without XLA while it is on)."""
    deterministic = tf_config.is_op_determinism_enabled()
    yield
    if not deterministic:
        tf_config.disable_op_determinism()
    keras.backend.clear_session()


@pytest.fixture(scope="session")
def two_replicas() -> tf.distribute.MirroredStrategy:
    """A MirroredStrategy over the two logical CPUs: two replicas in this process."""
    strategy = tf.distribute.MirroredStrategy(TWO_CPUS)
    assert strategy.num_replicas_in_sync == 2
    return strategy


def _files_of(directory: str) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under `directory`, by relative path."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            stat = os.stat(path)
            files[os.path.relpath(path, directory)] = (stat.st_size, stat.st_mtime_ns)
    return files


@pytest.fixture(scope="session")
def smoke_workdir(tmp_path_factory):
    """The work directory of one finished `configs/digits.py:smoke` run (30 steps).

    Shared by every test of the session that needs a finished run: read it, never write
    it (`shutil.copytree` it to `tmp_path` first); the session checks that at its end.
    """
    from configs import digits as digits_config
    from gradmix_tf import experiment

    workdir = str(tmp_path_factory.mktemp("smoke") / "run")
    deterministic = tf_config.is_op_determinism_enabled()
    experiment.train_and_evaluate(digits_config.get_config("smoke"), workdir)
    # The run turns on op determinism (train.deterministic) for the whole process, and Keras
    # then silently compiles without XLA: leave the process as the other tests expect it.
    if not deterministic:
        tf_config.disable_op_determinism()
    keras.backend.clear_session()
    files = _files_of(workdir)
    yield workdir
    assert _files_of(workdir) == files, "a test changed the shared smoke work directory"
