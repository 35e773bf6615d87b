"""The UCF101 + Kinetics -> HMDB51 task code, on the real clips in tiny manual layouts.

UCF101 comes from TFDS's own `ucf101` builder, which downloads: it cannot be
prepared offline, so these tests use the Kinetics source only.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from gradmix_tf.datasets import DatasetNotReadyError, hmdb51
from gradmix_tf.tasks import actions_hmdb51
from tests.video_testing import hmdb51_manual_dir, kinetics_manual_dir

OPTIONS = {
    "use_ucf101": False,
    "kinetics_classes": ("juggling balls", "playing guitar"),
    "kinetics_name": "two",
    "fps": 5.0,
    "frame_size": 24,
    "num_frames": 4,
    "size": 16,
}


@pytest.mark.slow
def test_task_builds_streams_from_prepared_builders(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    os.rename(hmdb51_manual_dir(tmp_path), manual / "hmdb51")
    os.rename(kinetics_manual_dir(tmp_path), manual / "kinetics")
    data = actions_hmdb51.hmdb51_task(
        seed=0,
        shots_per_class=1,
        data_dir=str(tmp_path / "data"),
        manual_dir=str(manual),
        **OPTIONS,
    )
    assert data.image_shape == (4, 16, 16, 3)
    assert [s.name for s in data.sources] == ["kinetics"]
    assert data.sources[0].size == 2
    assert data.sources[0].class_names == OPTIONS["kinetics_classes"]
    assert data.target_class_names == hmdb51.CLASS_NAMES
    # Train list: wave x2, cartwheel x1 -> one labelled clip a class, one unlabelled.
    assert (data.target.labelled.size, data.target.unlabelled.size, data.target.test.size) == (
        2,
        1,
        1,
    )
    labels = sorted(int(y) for _, y in data.target.labelled.dataset)
    assert labels == sorted(hmdb51.CLASS_NAMES.index(c) for c in ("cartwheel", "wave"))
    assert data.target.unlabelled.true_labels.tolist() == [hmdb51.CLASS_NAMES.index("wave")]
    for clip, _ in data.sources[0].dataset.concatenate(data.target.test.dataset):
        clip = clip.numpy()
        assert clip.shape == (4, 16, 16, 3) and 0.0 <= clip.min() and clip.max() <= 1.0
        assert clip.std() > 0.02
    ids = [int(i) for _, i in data.target.unlabelled.dataset]
    assert ids == [0]
    batch = next(iter(data.train_dataset(2, seed=0)))
    assert batch["sources"][0][0].shape == (2, 4, 16, 16, 3)

    # Prepared once: a second build reads the data directory and needs no manual_dir.
    again = actions_hmdb51.hmdb51_task(
        seed=1, shots_per_class=1, data_dir=str(tmp_path / "data"), **OPTIONS
    )
    assert again.target.labelled.size == 2


def test_unprepared_data_fails_fast_with_what_to_do(tmp_path):
    with pytest.raises(
        DatasetNotReadyError, match="(?s)testTrainMulti_7030_splits.*launch.prepare"
    ):
        actions_hmdb51.hmdb51_task(data_dir=str(tmp_path), **OPTIONS)


def test_capped_indices_keeps_the_first_clips_of_each_class():
    labels = np.array([0, 1, 0, 0, 1, 2])
    assert actions_hmdb51.capped_indices(labels, 2).tolist() == [0, 1, 2, 4, 5]
    assert actions_hmdb51.capped_indices(labels, None).tolist() == list(range(6))


def test_config_resolves_and_its_task_fails_fast_without_data(tmp_path):
    from configs import actions_hmdb51
    from gradmix_tf import experiment

    config = actions_hmdb51.get_config()
    config.data.task_options.data_dir = str(tmp_path)
    resolved = experiment.resolve_config(config)
    assert resolved.data.task == "actions_hmdb51" and resolved.model.trunk == "video_cnn"
    with pytest.raises(DatasetNotReadyError, match="(?s)videos/.*testTrainMulti_7030_splits"):
        experiment.build_data(resolved)
