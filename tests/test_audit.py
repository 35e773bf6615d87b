"""The source audit (`gradmix_tf/audit.py`, `launch.audit`, `launch.train --audit`)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from tensorflow.python.framework import config as tf_config

from configs import digits
from gradmix_tf import audit
from gradmix_tf.data.streams import LabelledStream, MultiStreamData, TargetSplit
from gradmix_tf.errors import UserError, WorkdirError
from tests.workdir_testing import output_of, run_launcher

# The audit's runs turn on op determinism for the process: off again after each test.
pytestmark = pytest.mark.usefixtures("op_determinism_kept")

TASK = "tests.task_helpers:shapes_task"  # one source, 3 target classes, 5 labels a class


def _config():
    config = digits.get_config("smoke")
    config.data.task = TASK
    config.train.steps_per_epoch = 5
    config.train.steps = 15
    config.train.checkpoint_every_steps = 15
    return config


def test_folds_are_stratified_and_drawn_from_the_seed():
    labels = np.repeat(np.arange(3), [10, 10, 11])
    folds = audit.stratified_folds(labels, 5, seed=0)
    for c in range(3):
        counts = np.bincount(folds[labels == c], minlength=5)
        assert counts.min() >= 2 and counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(folds, audit.stratified_folds(labels, 5, seed=0))
    assert not np.array_equal(folds, audit.stratified_folds(labels, 5, seed=1))


@pytest.mark.parametrize(
    "counts, folds, advice",
    [
        ([10, 10, 6], 5, "use --folds=3 (or fewer, at least 2)"),
        ([10, 3, 10], 2, "label at least 4 images of every class"),
        ([10, 10, 10], 1, "use --folds=5"),
    ],
)
def test_too_few_labels_a_fold_is_refused_saying_what_works(counts, folds, advice):
    labels = np.repeat(np.arange(3), counts)
    with pytest.raises(UserError) as error:
        audit.check_folds(labels, ("a", "b", "c"), folds)
    message = str(error.value)
    assert advice in message and "\n" not in message
    if min(counts) >= 4:
        audit.check_folds(labels, ("a", "b", "c"), min(counts) // 2)  # what it advises works


def _record(repeat, fold, candidate, correct):
    return {
        "repeat": repeat,
        "fold": fold,
        "candidate": candidate,
        "examples": list(range(fold * 10, fold * 10 + len(correct))),
        "correct": correct,
        "true_class_probability": [0.6 if right else 0.2 for right in correct],
        "seconds": 1.0,
    }


def test_the_change_without_a_source_is_paired_and_judged_by_its_interval():
    records = []
    for fold in range(4):
        base = [1] * (4 + fold % 2) + [0] * (6 - fold % 2)  # 0.4 or 0.5 with every source
        records.append(_record(0, fold, audit.ALL, base))
        # Without "noisy": 0.3 more every fold (hurts); without "useful": 0.3 less (helps);
        # without "either": +0.1 or -0.1 by turns (cannot tell).
        for name, change in (("noisy", 3), ("useful", -3), ("either", 1 if fold % 2 else -1)):
            right = base.count(1) + change
            records.append(_record(0, fold, f"without:{name}", [1] * right + [0] * (10 - right)))
    settings = {"config": _config().to_dict(), "folds": 4, "budget": 0.25, "repeats": 1}
    report = audit.summarize_audit(records, ["noisy", "useful", "either"], settings)
    sources = report["sources"]
    assert sources["noisy"]["change"] == pytest.approx(0.3)
    assert sources["noisy"]["verdict"] == audit.HURTS
    assert sources["useful"]["change"] == pytest.approx(-0.3)
    assert sources["useful"]["verdict"] == audit.HELPS
    assert sources["either"]["verdict"] == audit.CANNOT_TELL
    assert sources["either"]["ci_low"] < 0 < sources["either"]["ci_high"]
    assert report["recommended_drop_sources"] == ["noisy"]
    assert report["held_out_accuracy_all"] == pytest.approx(0.45)
    assert report["labelled_examples"] == 40
    markdown = audit.audit_markdown(report)
    assert "| noisy | +0.300 | +0.120 [+0.120, +0.120] |" in markdown  # the same every fold
    assert "leave out noisy." in markdown
    assert sources["noisy"]["probability_change"] == pytest.approx(0.12)
    assert sources["noisy"]["interval_of"] == "probability_by_fold"
    by_image = audit.paired_change(records, "without:noisy", "probability_by_image")
    assert by_image["change"] == pytest.approx(0.3)
    assert 0 < by_image["ci_low"] < 0.12 < by_image["ci_high"]
    by_fold = audit.summarize_audit(records, ["noisy"], settings, "accuracy_by_fold")
    assert "| noisy | +0.300 [+0.300, +0.300] | +0.120 |" in audit.audit_markdown(by_fold)


@pytest.fixture(scope="module")
def finished_audit(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("audit"))
    lines = []
    deterministic = tf_config.is_op_determinism_enabled()
    report = audit.run_audit(_config(), workdir, folds=2, budget=0.34, progress=lines.append)
    if not deterministic:  # as op_determinism_kept does, for a fixture wider than a test
        tf_config.disable_op_determinism()
    return workdir, report, lines


def test_an_audit_trains_every_candidate_on_every_fold_and_writes_its_report(finished_audit):
    workdir, report, lines = finished_audit
    assert len(lines) == 4 and lines[-1].startswith("[4/4] repeat 0 fold 1 without:shades")
    assert "min left" in lines[0]
    for name in audit.REPORT_FILES:
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    with open(os.path.join(workdir, "audit.json")) as f:
        assert json.load(f) == json.loads(json.dumps(report))
    shades = report["sources"]["shades"]
    assert shades["pairs"] == 2 and shades["verdict"] in (
        audit.HURTS,
        audit.HELPS,
        audit.CANNOT_TELL,
    )
    assert report["labelled_examples"] == 15  # every labelled image held out once
    runs = os.path.join(workdir, "runs", "repeat_0")
    with (
        open(os.path.join(runs, "fold_0", "all.json")) as f,
        open(os.path.join(runs, "fold_1", "all.json")) as g,
    ):
        held_out = [json.load(f)["examples"], json.load(g)["examples"]]
    assert sorted(held_out[0] + held_out[1]) == list(range(15))


def test_a_rerun_resumes_the_finished_runs_and_trains_only_the_missing(finished_audit, monkeypatch):
    workdir, report, _ = finished_audit
    trained = []
    real = audit.run_candidate

    def counted(config, data, steps, seed):
        trained.append(([s.name for s in data.sources], seed))
        return real(config, data, steps, seed)

    monkeypatch.setattr(audit, "run_candidate", counted)
    assert audit.run_audit(_config(), workdir, folds=2, budget=0.34) == report
    assert trained == []
    os.remove(os.path.join(workdir, "runs", "repeat_0", "fold_1", "without_shades.json"))
    again = audit.run_audit(_config(), workdir, folds=2, budget=0.34)
    assert trained == [([], 1)]  # fold 1's seed, no source
    timed = ("audit_seconds",)
    assert {k: v for k, v in again.items() if k not in timed} == {
        k: v for k, v in report.items() if k not in timed
    }  # the same run again: deterministic


def test_an_audit_of_other_settings_or_a_foreign_directory_is_refused(finished_audit, tmp_path):
    workdir, _, _ = finished_audit
    with pytest.raises(WorkdirError, match=r"holds an audit of other settings \(budget differ"):
        audit.run_audit(_config(), workdir, folds=2, budget=0.5)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(WorkdirError, match="not an audit directory"):
        audit.run_audit(_config(), str(tmp_path), folds=2)


def test_an_audit_with_too_few_labels_a_fold_stops_before_training(tmp_path):
    with pytest.raises(UserError, match=r"use --folds=2 \(or fewer, at least 2\)"):
        audit.run_audit(_config(), str(tmp_path / "audit"), folds=3)
    assert not os.path.exists(tmp_path / "audit")


def _report(workdir, **fields):
    report = {
        "task": TASK,
        "seed": 0,
        "recommended_drop_sources": ["shades"],
        "recommended_learned_relations": [],
        **fields,
    }
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "audit.json"), "w") as f:
        json.dump(report, f)


def test_training_on_the_recommendation_drops_the_sources_that_hurt(tmp_path):
    _report(str(tmp_path))
    config = _config()
    config.data.drop_sources = ("other",)
    assert audit.with_recommendation(config, str(tmp_path)).data.drop_sources == (
        "other",
        "shades",
    )
    assert config.data.drop_sources == ("other",)  # a copy: the config is unchanged
    config.seed = 3
    with pytest.raises(UserError, match="the audit in .* is of seed 0, the config's is 3"):
        audit.with_recommendation(config, str(tmp_path))
    with pytest.raises(UserError, match="no finished audit in"):
        audit.with_recommendation(_config(), str(tmp_path / "none"))


@pytest.mark.slow  # two fresh processes (TensorFlow imports, 4 short runs, one smoke run): ~40 s
def test_launchers_audit_then_train_on_the_recommendation(tmp_path):
    audit_dir, run_dir = str(tmp_path / "audit"), str(tmp_path / "run")
    task = [f"--config.data.task={TASK}", "--config.train.steps_per_epoch=5"]
    refused = run_launcher(
        "launch.audit", "--config=configs/digits.py:smoke", *task, f"--workdir={audit_dir}"
    )
    assert refused.returncode == 2, output_of(refused)
    assert refused.stderr.strip().splitlines()[-1].startswith("error: an audit of 5 folds")
    assert "use --folds=2" in refused.stderr
    completed = run_launcher(
        "launch.audit",
        "--config=configs/digits.py:smoke",
        *task,
        f"--workdir={audit_dir}",
        "--folds=2",
    )
    assert completed.returncode == 0, output_of(completed)
    assert "[4/4] repeat 0 fold 1 without:shades" in completed.stdout
    assert "| shades |" in completed.stdout and "Recommended:" in completed.stdout
    recommended = audit.load_report(audit_dir)["recommended_drop_sources"]
    trained = run_launcher(
        "launch.train",
        "--config=configs/digits.py:smoke",
        *task,
        f"--workdir={run_dir}",
        f"--audit={audit_dir}",
    )
    assert trained.returncode == 0, output_of(trained)
    assert f"leaving out {', '.join(recommended) or 'no source'}" in trained.stdout
    with open(os.path.join(run_dir, "config.json")) as f:
        assert json.load(f)["data"]["drop_sources"] == recommended


def test_training_on_the_recommendation_learns_the_relations_it_found_worth_it(tmp_path):
    _report(str(tmp_path), recommended_drop_sources=[], recommended_learned_relations=["b"])
    config = _config()
    config.step.label_adapter = False
    followed = audit.with_recommendation(config, str(tmp_path))
    assert followed.step.label_adapter and tuple(followed.step.adapter_sources) == ("b",)
    config.step.label_adapter, config.step.adapter_sources = True, ("a",)
    followed = audit.with_recommendation(config, str(tmp_path))
    assert tuple(followed.step.adapter_sources) == ("a", "b")


def _labelled(name, classes):
    images = np.zeros([len(classes) * 2, 8, 8, 3], np.uint8)
    return LabelledStream.from_arrays(name, images, np.tile(np.arange(len(classes)), 2), classes)


def test_sources_shared_as_labelled_get_a_learned_relation_candidate():
    target = TargetSplit(
        _labelled("target", ("a", "b", "c")), None, _labelled("target_test", ("a", "b", "c"))
    )
    data = MultiStreamData(
        [_labelled("same", ("a", "b", "c")), _labelled("part", ("c",)), _labelled("x", ("x",))],
        target,
    )
    config = _config()
    config.step.label_adapter = False
    names = [c.name for c in audit.candidates(config, data)]
    assert names == [
        "all",
        "without:same",
        "without:part",
        "without:x",
        "learned:same",
        "learned:part",
    ]
    learned = audit.candidates(config, data)[-1].configured(config)
    assert learned.step.label_adapter and tuple(learned.step.adapter_sources) == ("part",)
    config.step.label_adapter = True  # every such source learns its relation already
    assert [c.name for c in audit.candidates(config, data)][-1] == "without:x"
    config.step.adapter_sources = ("same",)
    last = audit.candidates(config, data)[-1]
    assert last.name == "learned:part"
    assert tuple(last.configured(config).step.adapter_sources) == ("same", "part")


def test_the_recommendation_takes_the_larger_gain_of_leaving_out_and_learning():
    records = []
    for fold in range(4):
        base = [1] * 4 + [0] * 6
        records.append(_record(0, fold, audit.ALL, base))
        for candidate, right in (
            ("without:noisy", 6),
            ("learned:noisy", 8 + fold % 2),  # gains more than leaving it out
            ("without:other", 6 + fold % 2),
            ("learned:other", 4 + fold % 2),  # within noise of "all"
        ):
            records.append(_record(0, fold, candidate, [1] * right + [0] * (10 - right)))
    settings = {"config": _config().to_dict(), "folds": 4, "budget": 0.25, "repeats": 1}
    report = audit.summarize_audit(records, ["noisy", "other"], settings)
    assert report["recommended_learned_relations"] == ["noisy"]
    assert report["recommended_drop_sources"] == ["other"]
    assert report["sources"]["noisy"]["learned"]["change"] == pytest.approx(0.45)
    markdown = audit.audit_markdown(report)
    assert "with its label relation learned: accuracy | probability |" in markdown
    assert "leave out other; learn the label relation of noisy." in markdown
