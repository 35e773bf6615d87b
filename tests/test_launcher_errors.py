"""Every user error of a launcher is one line `error: ...` on stderr and exit code 2.

The messages are made in process (`launch.errors`); one launcher run is in the default
suite, the others (a fresh process each, ~5 s) are marked slow. Each run checks the exit
code, that stderr is exactly one line (no traceback, no TensorFlow notice) and that
nothing on disk changed.
"""

from __future__ import annotations

import os
import shutil

import pytest
from absl import app, flags

from gradmix_tf.errors import ConfigError, UserError
from launch import errors, verbosity
from tests.workdir_testing import file_hashes, output_of, run_launcher

SMOKE = "--config=configs/digits.py:smoke"


def one_error_line(completed) -> str:
    """The one line of stderr of a launcher that exited with code 2."""
    assert completed.returncode == 2, output_of(completed)
    assert "Traceback" not in completed.stderr, output_of(completed)
    lines = completed.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output_of(completed)
    return lines[0]


# ------------------------------------------------------------------ in process
def test_a_user_error_is_one_line_and_exit_code_2(capsys):
    with pytest.raises(SystemExit) as exited, errors.user_errors():
        raise ConfigError("train.steps must be positive,\n  got 0.")
    assert exited.value.code == 2
    assert capsys.readouterr().err == "error: train.steps must be positive, got 0.\n"


@pytest.mark.parametrize(
    "error, line",
    [
        (app.UsageError("unexpected arguments: ['x']"), "unexpected arguments: ['x']"),
        (PermissionError(13, "Permission denied", "/out"), "/out: Permission denied"),
    ],
)
def test_usage_and_path_errors_are_user_errors(capsys, error, line):
    with pytest.raises(SystemExit, match="2"), errors.user_errors():
        raise error
    assert capsys.readouterr().err == f"error: {line}\n"


def test_a_bug_keeps_its_traceback():
    with pytest.raises(KeyError), errors.user_errors():
        raise KeyError("a bug")
    assert not issubclass(KeyError, errors.USER_ERRORS)
    assert issubclass(ConfigError, UserError)


def test_flag_parsing_errors_are_one_line(capsys):
    unknown_field = AttributeError('\'stepz\'\\nDid you mean "steps" instead of "stepz"?')
    argv = ["train", SMOKE, "--config.train.stepz=3"]
    assert errors._unknown_field(unknown_field, argv) == (
        "--config.train.stepz: the config has no field train.stepz (did you mean "
        "train.steps?); the config file lists every field."
    )
    failing_config = flags.IllegalFlagValueError(
        "flag --config=configs/digits.py:foo: Error whilst parsing config file:\n\n"
        'Traceback (most recent call last):\n  File "configs/digits.py", line 129\n'
        "ValueError: unknown config argument 'foo'; use 'smoke' or nothing.\n"
    )
    assert errors._flag_error(failing_config) == (
        "flag --config=configs/digits.py:foo: Error whilst parsing config file: "
        "ValueError: unknown config argument 'foo'; use 'smoke' or nothing."
    )


@pytest.mark.parametrize(
    "argv, level",
    [
        (["-m"], 0),
        (["-m", "--verbosity=1"], 1),
        (["-m", "-v", "2"], 2),
        (["-m", "--v=1"], 1),
        (["-m", "--verbosity", "0"], 0),
        (["-m", "--workdir=v"], 0),
    ],
)
def test_the_verbosity_of_a_command_line(argv, level):
    assert verbosity(argv) == level


# ------------------------------------------------------------ launcher runs
def test_benchmark_refuses_an_unknown_method(tmp_path):
    out = tmp_path / "bench"
    completed = run_launcher("launch.benchmark", SMOKE, f"--out={out}", "--methods=gradmixx")
    line = one_error_line(completed)
    assert line.startswith("error: unknown method(s) ['gradmixx']; known methods: gradmix")
    assert not out.exists()


@pytest.fixture
def unfinished_copy(smoke_workdir, tmp_path) -> str:
    """The smoke run without its results.json: resumable, not finished."""
    copy = str(tmp_path / "run")
    shutil.copytree(smoke_workdir, copy)
    os.remove(os.path.join(copy, "results.json"))
    return copy


TRAIN_CASES = {
    "unknown field": (
        ["--config.train.stepz=3"],
        "error: --config.train.stepz: the config has no field train.stepz (did you mean "
        "train.steps?)",
    ),
    "unknown method": (["--config.method=gradmixx"], "error: unknown method 'gradmixx'"),
    "missing config file": (
        ["--config=configs/nope.py"],
        "error: --config=configs/nope.py: cannot load the config file: [Errno 2] No such file",
    ),
    "failing config file": (
        ["--config=configs/digits.py:foo"],
        "error: flag --config=configs/digits.py:foo: Error whilst parsing config file: "
        "ValueError: unknown config argument 'foo'",
    ),
    "bad flag value": (["--config.seed=abc"], "error: flag --config.seed=abc: invalid literal"),
    "zero steps": (["--config.train.steps=0"], "error: train.steps must be positive, got 0."),
    "negative learning rate": (
        ["--config.optimizer.learning_rate=-0.001"],
        "error: optimizer.learning_rate must be a positive number, got -0.001.",
    ),
    "unexpected argument": (["extra"], "error: unexpected arguments: ['extra']"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_errors(case, tmp_path):
    args, start = TRAIN_CASES[case]
    workdir = tmp_path / "run"
    completed = run_launcher("launch.train", SMOKE, f"--workdir={workdir}", *args)
    assert one_error_line(completed).startswith(start)
    assert not workdir.exists()


@pytest.mark.slow
def test_train_without_a_workdir(tmp_path):
    line = one_error_line(run_launcher("launch.train", SMOKE))
    assert line == "error: flag --workdir=None: Flag --workdir must have a value other than None."


@pytest.mark.slow
def test_train_in_a_file_or_an_unwritable_directory(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    line = one_error_line(run_launcher("launch.train", SMOKE, f"--workdir={path}"))
    assert line == f"error: --workdir {path} is a file, not a directory: use another path."
    line = one_error_line(run_launcher("launch.train", SMOKE, f"--workdir={path}/run"))
    assert line.startswith(f"error: cannot write to the work directory {path}/run (")
    assert path.read_text() == "x"


@pytest.mark.slow
def test_train_with_another_config_on_a_finished_run(smoke_workdir, tmp_path):
    copy = str(tmp_path / "run")
    shutil.copytree(smoke_workdir, copy)
    before = file_hashes(copy)
    completed = run_launcher("launch.train", SMOKE, f"--workdir={copy}", "--config.seed=3")
    assert one_error_line(completed) == (
        f"error: {copy} holds a run of another config (seed 0 -> 3): use another --workdir, "
        "or --overwrite to delete its run and start afresh."
    )
    assert file_hashes(copy) == before


@pytest.mark.slow
def test_train_when_no_checkpoint_restores(unfinished_copy):
    directory = os.path.join(unfinished_copy, "checkpoints")
    for name in os.listdir(directory):
        if name.endswith(".index"):
            with open(os.path.join(directory, name), "r+b") as f:
                f.truncate(8)
    before = file_hashes(unfinished_copy)
    completed = run_launcher("launch.train", SMOKE, f"--workdir={unfinished_copy}")
    line = one_error_line(completed)
    assert line.startswith(f"error: none of the checkpoints listed in {directory}/checkpoint")
    assert "ckpt-30: " in line and "ckpt-10: " in line
    assert file_hashes(unfinished_copy) == before


@pytest.mark.slow
def test_evaluate_errors(smoke_workdir, tmp_path):
    missing = tmp_path / "missing"
    line = one_error_line(run_launcher("launch.evaluate", f"--workdir={missing}"))
    assert line == (
        f"error: {missing} does not exist: it is not a work directory of `python -m launch.train`."
    )
    line = one_error_line(run_launcher("launch.evaluate", f"--workdir={tmp_path}"))
    assert line.startswith(f"error: {tmp_path} has no config.json")
    shutil.copy(os.path.join(smoke_workdir, "config.json"), tmp_path)
    line = one_error_line(run_launcher("launch.evaluate", f"--workdir={tmp_path}"))
    assert line.startswith(f"error: no checkpoint in {tmp_path}/checkpoints")
    assert sorted(os.listdir(tmp_path)) == ["config.json"]


@pytest.mark.slow
def test_benchmark_prepare_and_bench_errors(tmp_path):
    line = one_error_line(
        run_launcher("launch.benchmark", SMOKE, f"--out={tmp_path}/b", "--seeds=0")
    )
    assert line == "error: --seeds must be positive, got 0."
    line = one_error_line(
        run_launcher(
            "launch.prepare",
            "--dataset=usps",
            f"--manual_dir={tmp_path}/manual",
            f"--data_dir={tmp_path}/data",
        )
    )
    assert "usps.h5" in line
    line = one_error_line(run_launcher("launch.bench_step", SMOKE, "--num_sources=0"))
    assert line == "error: --num_sources must be positive integers, got ['0']."
    line = one_error_line(
        run_launcher(
            "launch.bench_video", "--config=configs/actions.py:smoke", "--config.train.batch_size=0"
        )
    )
    assert line == "error: train.batch_size must be positive, got 0."
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.slow
def test_tensorflow_notices_are_held_back_unless_verbosity(smoke_workdir, tmp_path):
    """A finished run (nothing trained): the notices of TensorFlow's start, and with -v 1."""
    copy = str(tmp_path / "run")
    shutil.copytree(smoke_workdir, copy)
    quiet = run_launcher("launch.evaluate", f"--workdir={copy}")
    loud = run_launcher("launch.evaluate", f"--workdir={copy}", "-v", "1")
    assert quiet.returncode == loud.returncode == 0, output_of(quiet) + output_of(loud)
    held_back = ("cuInit", "oneDNN", "shuffle=True", "Could not find cuda drivers")
    held_back += ("This TensorFlow binary is optimized",)
    for notice in held_back:
        assert notice not in quiet.stderr, output_of(quiet)
    # With -v 1 TensorFlow's start-up notices come back: which ones depends on the processor
    # (oneDNN's only where TensorFlow turns oneDNN on, the CPU-instructions one only where
    # the processor has instructions the binary does not use).
    assert any(notice in loud.stderr for notice in held_back), output_of(loud)
    if not os.path.exists("/proc/driver/nvidia"):
        assert "cuInit" in loud.stderr, output_of(loud)
