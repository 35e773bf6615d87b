"""Every user error of a launcher is one line `error: ...` on stderr and exit code 2.

The messages are made in process (`launch.errors`); one launcher run is in the default
suite, the others (a fresh process each, ~5 s) are marked slow. Each run checks the exit
code, that stderr is exactly one line (no traceback, no TensorFlow notice) and that
nothing on disk changed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import ml_collections
import pytest
from absl import app, flags

from gradmix_tf import benchmark
from gradmix_tf.errors import ConfigError, UserError
from gradmix_tf.tasks.folders import decode_image_file
from launch import errors, verbosity
from tests.workdir_testing import REPO_ROOT, file_hashes, output_of, run_launcher

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
    "path, problem",
    [
        ("trian.steps", "the config has no field trian (did you mean train?)"),
        ("data.task_options.root", "the config has no field data.task_options"),
        ("model.filters.x", "model.filters is (8, 16), not a group of fields: set it whole"),
        ("model.filters", None),
    ],
)
def test_an_override_through_a_missing_or_plain_field_is_named(path, problem):
    config = ml_collections.ConfigDict(
        {"train": {"steps": 30}, "data": {"task": "digits"}, "model": {"filters": (8, 16)}}
    )
    found = errors._path_problem(config, path)
    assert found == problem if problem is None else found.startswith(problem)


def test_ctrl_c_is_one_line_and_exit_code_130(capsys):
    with pytest.raises(SystemExit) as exited, errors.user_errors():
        raise KeyboardInterrupt
    assert exited.value.code == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_tensorflow_op_names_are_taken_out_of_a_message(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(b"not an image")
    with pytest.raises(UserError) as raised:
        decode_image_file(str(path), (8, 8, 3))
    line = errors.message_of(raised.value)
    assert line == (
        f"{path}: not a readable image (Unknown image file format. One of JPEG, JPEG XL, PNG, "
        "GIF, BMP, WebP required.); replace the file or remove it."
    )


def test_a_results_file_with_a_cell_that_is_not_a_number_is_a_user_error(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("method,seed,target_test_accuracy,wall_seconds,steps\njoint,0,abc,1.0,30\n")
    with pytest.raises(UserError) as raised:
        benchmark.read_results(str(path))
    assert str(raised.value) == (
        f"{path}, line 2: target_test_accuracy is 'abc', not a number; give the results.csv "
        "of launch.benchmark (or correct that cell)."
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
    "misspelt group": (
        ["--config.trian.steps=20"],
        "error: --config.trian.steps: the config has no field trian (did you mean train?); "
        "the config file lists every field.",
    ),
    "field that is not a group": (
        ["--config.model.filters.x=1"],
        "error: --config.model.filters.x: model.filters is (8, 16), not a group of fields: set "
        "it whole, e.g. --config.model.filters=VALUE.",
    ),
    "task options of a task without them": (
        ["--config.data.task_options.root=/data"],
        "error: --config.data.task_options.root: the config has no field data.task_options; "
        "the config file lists every field.",
    ),
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


@pytest.mark.slow
def test_train_in_a_directory_that_is_not_a_work_directory(tmp_path):
    mine = tmp_path / "mine"
    (mine / "export").mkdir(parents=True)
    (mine / "export" / "model.bin").write_text("mine")
    for extra in ([], ["--overwrite"]):
        line = one_error_line(run_launcher("launch.train", SMOKE, f"--workdir={mine}", *extra))
        assert line.startswith(f"error: {mine} holds a run's files (export) but no config.json")
        assert (mine / "export" / "model.bin").read_text() == "mine"
        assert os.listdir(mine) == ["export"] and os.listdir(mine / "export") == ["model.bin"]


@pytest.mark.slow
def test_a_workdir_starting_with_a_tilde_is_in_the_home_directory(tmp_path):
    home = tmp_path / "home"
    (home / "x").mkdir(parents=True)
    (home / "x" / "notes.txt").write_text("mine")
    completed = run_launcher("launch.train", SMOKE, "--workdir=~/x", HOME=str(home))
    assert one_error_line(completed).startswith(f"error: {home}/x is not empty (notes.txt)")
    line = one_error_line(run_launcher("launch.evaluate", "--workdir=~/y", HOME=str(home)))
    assert line.startswith(f"error: {home}/y does not exist")
    assert not os.path.exists(os.path.join(REPO_ROOT, "~"))
    assert not (home / "y").exists() and os.listdir(home / "x") == ["notes.txt"]


@pytest.mark.slow
def test_evaluate_prints_its_results_when_it_cannot_save_them(smoke_workdir, tmp_path):
    copy = str(tmp_path / "run")
    shutil.copytree(smoke_workdir, copy)
    os.mkdir(os.path.join(copy, "evaluation.json.partial"))  # no file can be written there
    before = file_hashes(copy)
    completed = run_launcher("launch.evaluate", f"--workdir={copy}")
    assert completed.returncode == 0, output_of(completed)
    assert json.loads(completed.stdout)["step"] == 30
    assert "Traceback" not in completed.stderr, output_of(completed)
    assert completed.stderr.splitlines()[-1] == (
        f"warning: the results are not saved: {copy}/evaluation.json.partial: Is a directory"
    )
    assert file_hashes(copy) == before and not os.path.exists(f"{copy}/evaluation.json")


@pytest.mark.slow
def test_summarize_names_a_cell_that_is_not_a_number(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("method,seed,target_test_accuracy,wall_seconds,steps\njoint,0,,1.0,30\n")
    line = one_error_line(
        run_launcher("launch.summarize", f"--results={path}", f"--out={tmp_path}/out")
    )
    assert line == (
        f"error: {path}, line 2: target_test_accuracy is '', not a number; give the "
        "results.csv of launch.benchmark (or correct that cell)."
    )
    assert os.listdir(tmp_path) == ["results.csv"]


def start_training(workdir, *args, log) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": REPO_ROOT}
    environment.pop("TF_CPP_MIN_LOG_LEVEL", None)
    command = [sys.executable, "-m", "launch.train", SMOKE, f"--workdir={workdir}", *args]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdout=log, stderr=log)


def wait_for(predicate, process, timeout=300):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"the run ended (exit {process.returncode})"
        assert time.monotonic() < deadline
        time.sleep(0.02)


def registered(workdir, name):
    state = os.path.join(workdir, "checkpoints", "checkpoint")
    return os.path.exists(state) and f'"{name}"' in open(state).read()


@pytest.mark.slow
def test_two_runs_at_once_and_a_lock_left_by_a_kill(tmp_path):
    run = str(tmp_path / "run")
    lock = os.path.join(run, "run.lock")
    with open(tmp_path / "first.log", "w") as log:
        first = start_training(run, "--config.train.steps=1000", log=log)  # still running
        try:
            wait_for(lambda: registered(run, "ckpt-10"), first)
            assert open(lock).read() == f"{first.pid}\n"
            before = file_hashes(run)
            second = run_launcher("launch.train", SMOKE, f"--workdir={run}", "--config.seed=1")
            assert one_error_line(second) == (
                f"error: {run} is in use by another run (process {first.pid}, {lock}): wait "
                "for it to end, or use another --workdir."
            )
            assert first.poll() is None
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=60)
        finally:
            first.kill()
            first.wait(timeout=60)
    # The second run wrote nothing (the first went on writing its checkpoints and logs).
    assert file_hashes(run)["config.json"] == before["config.json"]
    assert json.load(open(os.path.join(run, "config.json")))["seed"] == 0
    assert open(lock).read() == f"{first.pid}\n"  # left by the kill
    again = run_launcher("launch.train", SMOKE, f"--workdir={run}", "--overwrite")
    assert again.returncode == 0, output_of(again)
    assert f"was left by process {first.pid}, which no longer runs: taken over" in again.stderr
    assert not os.path.exists(lock)


@pytest.mark.slow
def test_ctrl_c_stops_a_run_with_one_line_and_the_rerun_resumes(tmp_path):
    run = str(tmp_path / "run")
    with open(tmp_path / "interrupted.log", "w") as log:
        process = start_training(run, log=log)
        try:
            wait_for(lambda: registered(run, "ckpt-10"), process)
            process.send_signal(signal.SIGINT)
            process.wait(timeout=120)
        finally:
            process.kill()
            process.wait(timeout=60)
    output = (tmp_path / "interrupted.log").read_text()
    assert process.returncode == 130, output
    assert "Traceback" not in output and output.splitlines()[-1] == "interrupted", output
    assert not os.path.exists(os.path.join(run, "run.lock"))
    again = run_launcher("launch.train", SMOKE, f"--workdir={run}")
    assert again.returncode == 0 and "Resuming from step " in again.stderr, output_of(again)
