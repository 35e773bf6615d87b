"""The synthetic motion task (`gradmix_tf.tasks.actions`) and `configs/actions.py:smoke`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gradmix_tf.tasks import actions
from tests.video_testing import REPO_ROOT


def render(stream, names, split="train", data_seed=0, per_class=3, frames=6):
    return actions.synthesise_stream(stream, tuple(names), per_class, frames, 32, split, data_seed)


def test_generator_is_deterministic_for_a_seed():
    a = render(actions.TARGET_STREAM, actions.TARGET_CLASS_NAMES)
    actions.synthesise_stream.cache_clear()  # render again, not from the cache
    b = render(actions.TARGET_STREAM, actions.TARGET_CLASS_NAMES)
    np.testing.assert_array_equal(a.clips, b.clips)
    np.testing.assert_array_equal(a.labels, b.labels)
    c = render(actions.TARGET_STREAM, actions.TARGET_CLASS_NAMES, data_seed=1)
    assert not np.array_equal(a.clips, c.clips)
    assert a.clips.shape == (18, 6, 32, 32, 3) and a.clips.dtype == np.uint8
    assert a.labels.tolist() == np.repeat(np.arange(6), 3).tolist()


def test_target_train_and_test_share_no_digit_and_no_photo_pixel():
    pool = render(actions.TARGET_STREAM, actions.TARGET_CLASS_NAMES, per_class=20, frames=2)
    test = render(actions.TARGET_STREAM, actions.TARGET_CLASS_NAMES, "test", per_class=20, frames=2)
    source = render(
        actions.SOURCE_TRANSLATION_STREAM, actions.SOURCE_TRANSLATION_CLASS_NAMES, per_class=30
    )
    assert not set(pool.objects) & set(test.objects)
    assert not set(source.objects) & set(test.objects)
    for clips, is_test in ((pool, False), (test, True)):
        for corner in clips.background_rows:
            row, col = divmod(int(corner), 1000)
            # All four corners of the 32x32 background lie in tiles of the right colour.
            for r, c in ((row, col), (row + 31, col), (row, col + 31), (row + 31, col + 31)):
                assert actions.photo_tile_is_test(r, c) == is_test
    patches = render(actions.SOURCE_SPIN_ZOOM_STREAM, actions.SOURCE_SPIN_ZOOM_CLASS_NAMES)
    for obj in patches.objects:
        row, col = divmod(int(obj) % 10**6, 1000)
        assert not actions.photo_tile_is_test(row, col)
        assert not actions.photo_tile_is_test(row + 57, col + 57)


def test_each_action_moves_the_way_it_is_named():
    clips = render(
        actions.SOURCE_TRANSLATION_STREAM, actions.SOURCE_TRANSLATION_CLASS_NAMES, frames=8
    )

    def centre_of_mass(frame):
        grey = frame.astype(np.float64).mean(axis=-1)
        grey = np.where(grey > 100, grey, 0)
        ys, xs = np.mgrid[: grey.shape[0], : grey.shape[1]]
        return (xs * grey).sum() / grey.sum(), (ys * grey).sum() / grey.sum()

    for clip, label in zip(clips.clips, clips.labels):
        (x0, y0), (x1, y1) = centre_of_mass(clip[0]), centre_of_mass(clip[-1])
        dx, dy = actions._DIRECTIONS[actions.SOURCE_TRANSLATION_CLASS_NAMES[label]]
        assert (x1 - x0) * dx + (y1 - y0) * dy > 4  # moved > 4 px the named way


def test_task_streams_and_k_shot_split():
    data = actions.actions_task(seed=0, shots_per_class=2, max_per_class=4, num_frames=6)
    assert data.image_shape == (6, 32, 32, 3)
    assert [s.name for s in data.sources] == list(actions.SOURCE_STREAMS)
    assert [s.size for s in data.sources] == [16, 16]
    assert data.target_class_names == actions.TARGET_CLASS_NAMES
    target = data.target
    assert (target.labelled.size, target.unlabelled.size, target.test.size) == (12, 12, 24)
    other = actions.actions_task(seed=1, shots_per_class=2, max_per_class=4, num_frames=6)
    first = np.stack([x for x, _ in target.labelled.dataset.as_numpy_iterator()])
    second = np.stack([x for x, _ in other.target.labelled.dataset.as_numpy_iterator()])
    assert not np.array_equal(first, second)  # the seed redraws the labelled clips only
    clip = first[0]
    assert clip.dtype == np.float32 and 0.0 <= clip.min() and clip.max() <= 1.0


@pytest.mark.slow
def test_smoke_config_trains_end_to_end(tmp_path):
    workdir = str(tmp_path / "run")
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.train",
            "--config=configs/actions.py:smoke",
            f"--workdir={workdir}",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    assert results["task"] == "actions" and results["steps"] == 20
    assert 0.0 <= results["target_test_accuracy"] <= 1.0
    assert set(results["mixing_weights"]) == {*actions.SOURCE_STREAMS, "pseudo_labels"}
    with open(os.path.join(workdir, "export", "gradmix_export.json")) as f:
        assert json.load(f)["input_shape"] == [8, 32, 32, 3]
