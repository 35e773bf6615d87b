"""Tests of the clip pipeline (`gradmix_tf.data.clips`) on real clips and tiny tensors."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf.data import clips
from gradmix_tf.export.predict import multi_clip_predict
from tests.video_testing import (
    HMDB51_CARTWHEEL,
    HMDB51_WAVE,
    KINETICS_CLIPS,
    UCF101_CLIPS,
    shared_clip,
)


@pytest.mark.parametrize(
    "name", [HMDB51_CARTWHEEL, HMDB51_WAVE[0], UCF101_CLIPS[0], KINETICS_CLIPS[0]]
)
def test_decode_real_clip_frame_count_shape_and_range(name):
    path = shared_clip(name)
    info = clips.probe_video(path)
    video = clips.decode_video(path, size=(48, 64))
    assert video.dtype == np.uint8
    assert video.shape[1:] == (48, 64, 3)
    # Every frame of the file (ffprobe's count; ffmpeg may drop a trailing frame or two).
    assert abs(video.shape[0] - info["num_frames"]) <= 2, (video.shape, info)
    assert video.min() < 64 and video.max() > 160  # real pictures, not blank frames
    assert video.std() > 10


def test_decode_resamples_to_a_fixed_frame_rate():
    path = shared_clip(HMDB51_CARTWHEEL)  # the clip PyAV cannot read
    info = clips.probe_video(path)
    video = clips.decode_video(path, size=(32, 32), fps=10)
    expected = info["num_frames"] / info["fps"] * 10
    assert abs(video.shape[0] - expected) <= 2, (video.shape, expected)


def test_decode_keeps_the_file_size_and_can_stop_early():
    path = shared_clip(UCF101_CLIPS[0])
    video = clips.decode_video(path, max_frames=5)
    assert video.shape == (5, 240, 320, 3)


def test_decode_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        clips.decode_video(str(tmp_path / "missing.avi"), size=(8, 8))
    bad = tmp_path / "not_a_video.mp4"
    bad.write_bytes(b"hello")
    with pytest.raises(clips.VideoDecodeError, match="cannot"):
        clips.decode_video(str(bad), size=(8, 8))


def test_video_file_dataset_gives_normalised_clips_of_fixed_length():
    paths = [shared_clip(name) for name in (HMDB51_CARTWHEEL, *HMDB51_WAVE)]
    dataset = clips.video_file_dataset(paths, [0, 1, 1, 1], clip_length=8, size=(32, 40), fps=10)
    examples = list(dataset.as_numpy_iterator())
    assert len(examples) == 4
    for clip, _ in examples:
        assert clip.shape == (8, 32, 40, 3) and clip.dtype == np.float32
        assert 0.0 <= clip.min() and clip.max() <= 1.0 and clip.std() > 0.02
    assert [int(y) for _, y in examples] == [0, 1, 1, 1]
    # Evaluation takes the centre window: the same clip on every pass.
    again = next(iter(dataset))[0].numpy()
    np.testing.assert_array_equal(again, examples[0][0])


def test_training_dataset_draws_random_windows_every_epoch():
    path = shared_clip(HMDB51_CARTWHEEL)
    dataset = clips.video_file_dataset(
        [path], [0], clip_length=4, size=(16, 16), fps=10, training=True, seed=3
    ).take(6)
    firsts = {clip[0].tobytes() for clip, _ in dataset.as_numpy_iterator()}
    assert len(firsts) > 1  # not frozen by the cache of decoded frames


def test_sample_clip_modes_and_looping():
    video = tf.reshape(tf.range(10), [10, 1, 1, 1])
    center = clips.sample_clip(video, 4, "center")
    assert center[:, 0, 0, 0].numpy().tolist() == [3, 4, 5, 6]
    strided = clips.sample_clip(video, 3, "start", stride=2, start=1)
    assert strided[:, 0, 0, 0].numpy().tolist() == [1, 3, 5]
    looped = clips.sample_clip(video[:3], 5, "center")
    assert looped[:, 0, 0, 0].numpy().tolist() == [0, 1, 2, 0, 1]
    starts = {
        int(clips.sample_clip(video, 4, "random", seed=[i, 0])[0, 0, 0, 0]) for i in range(40)
    }
    assert starts == set(range(7))  # every valid start, and no other
    a = clips.sample_clip(video, 4, "random", seed=[5, 1])
    np.testing.assert_array_equal(a, clips.sample_clip(video, 4, "random", seed=[5, 1]))
    with pytest.raises(ValueError, match="mode"):
        clips.sample_clip(video, 4, "middle")


def test_multi_clip_windows_are_evenly_spaced():
    video = tf.reshape(tf.range(20), [20, 1, 1, 1])
    windows = clips.multi_clip_windows(video, 4, 3)
    assert windows.shape == (3, 4, 1, 1, 1)
    assert windows[:, 0, 0, 0, 0].numpy().tolist() == [0, 8, 16]
    one = clips.multi_clip_windows(video, 4, 1)
    assert one[0, :, 0, 0, 0].numpy().tolist() == [8, 9, 10, 11]


def test_multi_clip_predict_averages_the_clips():
    video = np.zeros([12, 2, 2, 1], np.uint8)
    video[6:] = 255  # dark first half, bright second half

    def predict(batch):  # "probability of bright" = mean pixel value
        mean = tf.reduce_mean(batch, axis=[1, 2, 3, 4])
        return tf.stack([1 - mean, mean], axis=1)

    averaged = multi_clip_predict(predict, video, clip_length=4, num_clips=2).numpy()
    np.testing.assert_allclose(averaged, [0.5, 0.5], atol=1e-6)


def test_resize_clip_fills_then_crops():
    clip = tf.ones([2, 30, 60, 3])
    out = clips.resize_clip(clip, (16, 16))
    assert out.shape == (2, 16, 16, 3)
    random = clips.resize_clip(clip, (16, 16), crop="random", seed=[1, 2])
    assert random.shape == (2, 16, 16, 3)
    assert clips.normalise_clip(tf.constant([[255]], tf.uint8)).numpy().tolist() == [[1.0]]
