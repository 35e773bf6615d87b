"""Tests of the source study (`gradmix_tf.source_study`, `launch.summarize`,
`launch.source_study`): usefulness by leave-one-source-out against mixing weights."""

from __future__ import annotations

import os

import numpy as np
import pytest

from gradmix_tf import benchmark, source_study
from gradmix_tf.errors import UserError
from tests.workdir_testing import output_of, run_launcher

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_results(path, table):
    rows = [
        {"method": m, "seed": s, "target_test_accuracy": a, "wall_seconds": 1.0, "steps": 10}
        for m, s, a in table
    ]
    benchmark.write_reports(rows, str(path), reference=table[0][0])
    return str(path / "results.csv")


def write_history(out, method, seed, weights, streams=("a", "b", "c")):
    directory = benchmark.run_dir(str(out), method, seed)
    os.makedirs(directory)
    layers = ["gradmix/trunk/conv1", "gradmix/trunk/dense", "gradmix/head_a"]
    np.savez(
        os.path.join(directory, "mixing_weights.npz"),
        steps=np.arange(1, weights.shape[0] + 1),
        weights=np.asarray(weights, np.float32),
        stream_names=np.asarray(streams),
        layer_names=np.asarray(layers[: weights.shape[2]]),
    )


def test_merge_results_joins_seeds_and_renames(tmp_path):
    first = write_results(
        tmp_path / "s0", [("joint", 0, 0.5), ("persistent_pseudo_labels", 0, 0.6)]
    )
    second = write_results(tmp_path / "s5", [("joint", 5, 0.4), ("rule_x", 5, 0.7)])
    rows = source_study.merge_results([f"{first}@persistent_pseudo_labels=rule_x", second])
    assert [(r["method"], r["seed"], r["target_test_accuracy"]) for r in rows] == [
        ("joint", 0, 0.5),
        ("rule_x", 0, 0.6),
        ("joint", 5, 0.4),
        ("rule_x", 5, 0.7),
    ]


def test_merge_results_refuses_two_accuracies_for_one_run(tmp_path):
    first = write_results(tmp_path / "a", [("joint", 0, 0.5)])
    second = write_results(tmp_path / "b", [("joint", 0, 0.51)])
    with pytest.raises(UserError, match="joint seed 0 is in two results files"):
        source_study.merge_results([first, second])
    with pytest.raises(UserError, match="no results file"):
        source_study.merge_results([str(tmp_path / "missing.csv")])


def test_usefulness_is_the_paired_loss_without_the_source():
    full = {0: 0.50, 1: 0.60, 2: 0.55}
    useful = source_study.usefulness(
        full, {"helps": {0: 0.40, 1: 0.52, 2: 0.45, 7: 0.1}, "hurts": {0: 0.53, 1: 0.62}}
    )
    assert useful["helps"]["seeds"] == [0, 1, 2]  # seed 7 has no full run: left out
    np.testing.assert_allclose(useful["helps"]["gap"], np.mean([0.10, 0.08, 0.10]))
    assert useful["helps"]["ci_low"] > 0 and useful["helps"]["wins"] == 3
    np.testing.assert_allclose(useful["hurts"]["gap"], -0.025)
    assert useful["hurts"]["losses"] == 2


def test_weight_means_over_steps_trunk_layers_and_seeds(tmp_path):
    # [steps, streams, layers]: the last layer is a head and must not count.
    w0 = np.zeros((2, 3, 3))
    w0[:, 0, :2], w0[:, 1, :2], w0[:, 2, :2], w0[:, :, 2] = 1.0, 2.0, 0.5, 100.0
    w1 = np.zeros((2, 3, 3))
    w1[0, :, :2], w1[1, :, :2] = 3.0, 1.0  # every stream: mean 2 over steps
    write_history(tmp_path / "bench_a", "rule", 0, w0)
    write_history(tmp_path / "bench_b", "rule", 5, w1)
    write_history(tmp_path / "bench_b", "rule", 0, w1)  # seed 0 again: the first one counts
    means = source_study.stream_weight_means(
        [str(tmp_path / "bench_a"), str(tmp_path / "bench_b")], "rule"
    )
    assert means["a"]["per_seed"] == {0: 1.0, 5: 2.0}
    np.testing.assert_allclose([means[n]["mean"] for n in "abc"], [1.5, 2.0, 1.25])
    with pytest.raises(UserError, match="no run of method 'other'"):
        source_study.stream_weight_means([str(tmp_path / "bench_a")], "other")


def test_rank_agreement_and_table():
    useful = {
        "helps": {"gap": 0.05, "ci_low": 0.01, "ci_high": 0.09, "seeds": [0, 1]},
        "hurts": {"gap": -0.03, "ci_low": -0.05, "ci_high": -0.01, "seeds": [0, 1]},
    }
    good = {"helps": {"mean": 1.4}, "hurts": {"mean": 0.8}}
    bad = {"helps": {"mean": 0.9}, "hurts": {"mean": 1.7}}
    assert source_study.rank_agreement(useful, good) == {
        "same_order": True,
        "least_useful_least_weight": True,
    }
    assert source_study.rank_agreement(useful, bad) == {
        "same_order": False,
        "least_useful_least_weight": False,
    }
    table = source_study.usefulness_markdown(useful, {"good": good, "bad": bad})
    lines = table.splitlines()
    assert lines[0] == "| source | usefulness [95% CI] | good | bad |"
    assert lines[2].startswith("| helps | +0.0500 [+0.0100, +0.0900] (2) | 1.400 | 0.900 |")
    assert lines[3].startswith("| hurts |")
    assert lines[-1].endswith("| yes / yes | no / no |")


@pytest.mark.slow
def test_launchers_summarize_and_source_study(tmp_path):
    full_a = write_results(tmp_path / "T_s0", [("joint", 0, 0.50), ("joint", 1, 0.60)])
    full_b = write_results(tmp_path / "T_s5", [("joint", 5, 0.55), ("rule", 5, 0.57)])
    drop_b = write_results(
        tmp_path / "drop_b", [("joint", 0, 0.40), ("joint", 1, 0.50), ("joint", 5, 0.46)]
    )
    drop_c = write_results(
        tmp_path / "drop_c", [("joint", 0, 0.52), ("joint", 1, 0.63), ("joint", 5, 0.56)]
    )
    weights = np.ones((2, 3, 2))
    weights[:, 2] = 0.3  # stream c gets the least
    write_history(tmp_path / "T_s5", "rule", 5, weights)

    summary = run_launcher(
        "launch.summarize",
        f"--results={full_a},{full_b}",
        "--reference=joint",
        f"--out={tmp_path / 'merged'}",
    )
    assert summary.returncode == 0, output_of(summary)
    merged = benchmark.read_results(str(tmp_path / "merged" / "results.csv"))
    assert sorted((r["method"], r["seed"]) for r in merged) == [
        ("joint", 0),
        ("joint", 1),
        ("joint", 5),
        ("rule", 5),
    ]
    assert "| rule |" in summary.stdout

    study = run_launcher(
        "launch.source_study",
        f"--joint={full_a},{full_b}",
        f"--drop=b={drop_b}",
        f"--drop=c={drop_c}",
        f"--weights=rule@renamed_rule={tmp_path / 'T_s5'}",
        f"--out={tmp_path / 'study'}",
    )
    assert study.returncode == 0, output_of(study)
    table = open(tmp_path / "study" / "usefulness.md").read()
    assert "| b | +0.0967" in table  # (0.10 + 0.10 + 0.09) / 3
    assert "| yes / yes |" in table  # c: least useful (it hurts) and the least weight
    assert table.splitlines()[0].endswith("| renamed_rule |")
    with open(tmp_path / "study" / "usefulness.png", "rb") as f:
        assert f.read(8) == PNG_MAGIC


def test_source_study_flag_pairs_need_a_name_and_a_path():
    from absl import app

    from launch import source_study as launcher

    assert launcher._pairs(["b=x.csv,y.csv"], "drop") == {"b": ["x.csv", "y.csv"]}
    for value in ("b", "=x.csv", "b="):
        with pytest.raises(app.UsageError, match="write NAME=PATH"):
            launcher._pairs([value], "drop")
