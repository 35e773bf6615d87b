"""Tests of the benchmark harness (`gradmix_tf.benchmark`, `launch.benchmark`)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import digits
from gradmix_tf import benchmark
from gradmix_tf.errors import WorkdirError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rows_of(table):
    return [
        {"method": m, "seed": s, "target_test_accuracy": a, "wall_seconds": 1.0, "steps": 10}
        for m, s, a in table
    ]


def test_summary_statistics_and_paired_gaps():
    rows = rows_of(
        [
            ("gradmix", 0, 0.60),
            ("gradmix", 1, 0.70),
            ("joint", 0, 0.50),
            ("joint", 1, 0.62),
            ("oracle", 0, 0.95),
        ]
    )
    summary = {s["method"]: s for s in benchmark.summarize(rows)}
    assert summary["gradmix"]["mean"] == pytest.approx(0.65)
    assert summary["gradmix"]["std"] == pytest.approx(np.std([0.6, 0.7], ddof=1))
    assert summary["joint"]["gap"] == pytest.approx(-0.09)
    assert summary["joint"]["gap_std"] == pytest.approx(np.std([-0.10, -0.08], ddof=1))
    assert (summary["joint"]["wins"], summary["joint"]["losses"]) == (0, 2)
    # t interval with 1 degree of freedom: t_0.975 = 12.706
    half = 12.7062 * np.std([-0.10, -0.08], ddof=1) / np.sqrt(2)
    assert summary["joint"]["ci_low"] == pytest.approx(-0.09 - half, rel=1e-4)
    assert summary["joint"]["ci_high"] == pytest.approx(-0.09 + half, rel=1e-4)
    assert np.isnan(summary["oracle"]["ci_low"])  # one paired seed: no interval
    assert summary["oracle"]["std"] == 0.0  # one seed
    assert benchmark.best_method(list(summary.values())) == "gradmix"  # oracle excluded


def test_paired_gap_interval_and_record():
    """Ten seeds: the mean gap, the t interval (scipy-free check: t_0.975,9 = 2.2622)."""
    rng = np.random.default_rng(0)
    reference = rng.uniform(0.4, 0.6, size=10)
    values = reference + rng.normal(0.02, 0.01, size=10)
    values[3] = reference[3]  # one tie
    gap = benchmark.paired_gap(values, reference)
    diffs = values - reference
    half = 2.2622 * diffs.std(ddof=1) / np.sqrt(10)
    assert gap["gap"] == pytest.approx(diffs.mean())
    assert gap["ci_low"] == pytest.approx(diffs.mean() - half, rel=1e-4)
    assert gap["ci_high"] == pytest.approx(diffs.mean() + half, rel=1e-4)
    assert (gap["wins"], gap["ties"], gap["losses"]) == (
        int((diffs > 0).sum()),
        1,
        int((diffs < 0).sum()),
    )


def test_gaps_to_another_reference():
    rows = rows_of([("gradmix", 0, 0.6), ("gradmix", 1, 0.7), ("joint", 0, 0.5), ("joint", 1, 0.6)])
    summary = {s["method"]: s for s in benchmark.summarize(rows, reference="joint")}
    assert summary["gradmix"]["gap"] == pytest.approx(0.1)
    assert summary["gradmix"]["wins"] == 2
    text = benchmark.summary_markdown(list(summary.values()), "t")
    assert "gap to joint [95% CI]" in text
    (gradmix_line,) = [line for line in text.splitlines() if line.startswith("| gradmix")]
    assert "+0.1000 [" in gradmix_line and "| 2/0/0 |" in gradmix_line
    with pytest.raises(ValueError, match="reference method 'pcgrad' is not among"):
        benchmark.run_benchmark(None, ["gradmix"], [0], "/nonexistent", reference="pcgrad")


def test_markdown_bolds_the_best_competitor_only():
    rows = rows_of([("gradmix", 0, 0.6), ("joint", 0, 0.7), ("oracle", 0, 0.9)])
    text = benchmark.summary_markdown(benchmark.summarize(rows), "t")
    (joint_line,) = [line for line in text.splitlines() if line.startswith("| joint")]
    (oracle_line,) = [line for line in text.splitlines() if line.startswith("| oracle")]
    assert "**0.7000 ± 0.0000**" in joint_line
    assert "**" not in oracle_line and "(reference)" in oracle_line
    assert "+0.1000" in joint_line


def test_reports_are_written(tmp_path):
    rows = rows_of([("gradmix", 0, 0.6), ("gradmix", 1, 0.7), ("joint", 0, 0.5)])
    history = benchmark.run_dir(str(tmp_path), "gradmix", 0)
    os.makedirs(history)
    np.savez(
        os.path.join(history, "mixing_weights.npz"),
        steps=np.array([10, 20, 30, 40, 50]),
        weights=np.random.default_rng(0).uniform(size=(5, 2, 3)),
        stream_names=np.array(["a", "b"]),
        layer_names=np.array(["gradmix/trunk/conv", "gradmix/trunk/dense", "gradmix/head"]),
    )
    paths = benchmark.write_reports(rows, str(tmp_path))
    assert benchmark.read_results(str(tmp_path / "results.csv")) == [
        {**r, "pseudo_label_acceptance": "", "pseudo_label_precision": ""} for r in rows
    ]
    for name in ("summary.png", "mixing_weights_over_time.png"):
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == PNG_MAGIC
    assert paths["mixing_weights"].endswith("mixing_weights_over_time.png")


def test_unknown_method_and_empty_lists_are_refused(tmp_path):
    config = digits.get_config("smoke")
    with pytest.raises(ValueError, match="unknown method.*gradmixx.*known methods: gradmix"):
        benchmark.run_benchmark(config, ["gradmixx"], [0], str(tmp_path))
    with pytest.raises(ValueError, match="at least one method and one seed"):
        benchmark.run_benchmark(config, ["gradmix"], [], str(tmp_path))


def test_a_run_directory_is_not_reused_by_another_config(tmp_path):
    config = digits.get_config("smoke")
    workdir = benchmark.run_dir(str(tmp_path), "joint", 0)
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(benchmark.run_config(config, "joint", 0).to_json_best_effort())
    config.train.steps = 20
    with pytest.raises(
        WorkdirError, match=r"another config \(train.steps 30 -> 20\): use another --out"
    ):
        benchmark.run_benchmark(config, ["joint"], [0], str(tmp_path))
    assert os.listdir(workdir) == ["config.json"]


@pytest.mark.slow
def test_smoke_benchmark_end_to_end_then_rerun_skips(tmp_path):
    """`configs/digits.py:smoke`: 2 methods x 2 seeds through the launcher, then a rerun."""
    out = str(tmp_path / "bench")
    command = [
        sys.executable,
        "-m",
        "launch.benchmark",
        "--config=configs/digits.py:smoke",
        f"--out={out}",
    ]
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.time()
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    with open(os.path.join(out, "results.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("gradmix", "0"),
        ("joint", "0"),
        ("gradmix", "1"),
        ("joint", "1"),
    ]
    for row in rows:
        assert 0.0 <= float(row["target_test_accuracy"]) <= 1.0
        assert int(row["steps"]) == 30
    assert rows[0]["pseudo_label_precision"] != "" and rows[1]["pseudo_label_precision"] == ""
    assert "ETA" in first.stdout + first.stderr
    summary = open(os.path.join(out, "summary.md")).read()
    assert summary.count("**") == 2 and "| gradmix |" in summary.replace("**", "")
    for name in ("summary.png", "mixing_weights_over_time.png"):
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == PNG_MAGIC
    first_seconds = time.time() - started

    started = time.time()
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("finished before") == 4
    assert time.time() - started < first_seconds
    with open(os.path.join(out, "results.csv"), newline="") as f:
        assert list(csv.DictReader(f)) == rows
