"""The command-line launchers: `python -m launch.<name>` (train, evaluate, benchmark, predict,
prepare, bench_step, bench_video).

Quiet by default. `python -m launch.<name>` imports this package before the launcher, and
so before TensorFlow; unless the command line asks for absl's `--verbosity` (`-v`) of 1
or more, it keeps TensorFlow's notices off a run's output:

- `TF_CPP_MIN_LOG_LEVEL=2`: no INFO / WARNING lines of TensorFlow's C++ code. On a
  machine without an NVIDIA driver 3, which also hides the ERROR line "failed call to
  cuInit" of TensorFlow's CUDA probe (on TF 2.21, `CUDA_VISIBLE_DEVICES=""` does not: the
  probe runs anyway). A value set in the environment is kept.
- TensorFlow is imported here with the notices its libraries print while they load,
  before any log level applies ("oneDNN custom operations are on", "Could not find cuda
  drivers", the CPU instruction notice) held back; any other line printed meanwhile (an
  error, a Python warning) is printed as usual.
- TensorFlow's and TFDS's Python INFO logs (the SavedModel writer's, the checkpoint
  saver's, ...) are off, and so is TFDS's warning "Variant folder ... has no
  dataset_info.json" for a dataset not prepared yet; the project's own logs stay.

Errors: `launch/errors.py` (one line and exit code 2 for a user's mistake).
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import re
import sys
import tempfile

_LOAD_NOTICE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} "  # an absl C++ INFO or WARNING line
    r"|To enable the following instructions:)"
)


def verbosity(argv: list[str]) -> int:
    """absl's `--verbosity` / `-v` of a command line (0 when not given)."""
    args = argv[1:]
    for index, arg in enumerate(args):
        name, equals, value = arg.partition("=")
        if name not in ("--verbosity", "-verbosity", "--v", "-v"):
            continue
        if not equals:
            value = args[index + 1] if index + 1 < len(args) else "0"
        try:
            return int(value)
        except ValueError:
            return 0
    return 0


def has_nvidia_driver() -> bool:
    return os.path.exists("/proc/driver/nvidia") or ctypes.util.find_library("cuda") is not None


def _import_tensorflow_holding_back_load_notices():
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not _LOAD_NOTICE.match(line)))


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if has_nvidia_driver() else "3")
    if "tensorflow" not in sys.modules:
        _import_tensorflow_holding_back_load_notices()
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    logging.getLogger("absl").addFilter(_no_tensorflow_info)  # TF modules log with absl too


def _no_tensorflow_info(record: logging.LogRecord) -> bool:
    """Drops TensorFlow's and TFDS's INFO records, and TFDS's warning that a dataset
    version it looked for is not there (a dataset not prepared yet, which the launchers
    report themselves)."""
    path = record.pathname
    if f"{os.sep}tensorflow_datasets{os.sep}" in path:
        return record.levelno > logging.INFO and not str(record.msg).startswith("Variant folder")
    return record.levelno > logging.INFO or f"{os.sep}tensorflow{os.sep}" not in path


# `python -m launch.<name>`: while the package is imported, sys.argv[0] is "-m".
if sys.argv[:1] == ["-m"] and verbosity(sys.argv) < 1:
    _quiet_tensorflow()
