"""The clip pipeline: decode videos with ffmpeg, sample fixed-length clips in tf.data.

A *video* is uint8 frames `[T, H, W, C]` of any length T; a *clip* is a
fixed-length float32 window `[clip_length, H, W, C]` with values in [0, 1],
the unit every video stream and video trunk works on (batch-first:
`[B, clip_length, H, W, C]`).

- `decode_video` runs the `ffmpeg` binary (no PyAV, no tensorflow-io) and
  returns frames resampled to a fixed frame rate and size.
- `sample_clip` takes one window of a video: ``"random"`` (a random temporal
  crop, for training), ``"center"`` (evaluation) or a given start;
  `multi_clip_windows` takes ``num_clips`` evenly spaced windows (multi-clip
  averaging at evaluation, `gradmix_tf.export.predict.multi_clip_predict`).
  Videos shorter than the window are looped.
- `video_file_dataset` chains them for files: parallel decoding, caching of
  the decoded frames (in memory or a file), clip sampling, prefetch.

Inside `MultiStreamData` a stream's dataset is cached and then shuffled and
repeated, so a random crop made *in* the stream would be frozen after the
first epoch. Streams therefore hold windows a little longer than the model's
clip, and the video trunks start with `TemporalCrop`, a layer that draws a
random window of `clip_length` frames at every training step and takes the
centre window at inference (see `gradmix_tf.networks.video_trunks`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov")


class VideoDecodeError(ValueError):
    """Raised when ffmpeg cannot decode a file."""


def _ffmpeg(binary: str = "ffmpeg") -> str:
    path = shutil.which(binary)
    if path is None:
        raise VideoDecodeError(
            f"the `{binary}` binary is not on PATH: install ffmpeg (Debian/Ubuntu: "
            "`apt-get install ffmpeg`) to decode videos."
        )
    return path


def probe_video(path: str) -> dict:
    """Width, height, frame rate and frame count of the first video stream (ffprobe)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file not found: {path}")
    command = [
        _ffmpeg("ffprobe"), "-v", "error", "-select_streams", "v:0", "-show_entries",
        "stream=width,height,r_frame_rate,nb_frames", "-of", "json", path,
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    streams = json.loads(completed.stdout or "{}").get("streams") if completed.stdout else None
    if completed.returncode or not streams:
        raise VideoDecodeError(f"cannot read {path} as a video: {completed.stderr.strip()}")
    stream = streams[0]
    numerator, _, denominator = stream["r_frame_rate"].partition("/")
    frames = stream.get("nb_frames", "")
    return {
        "width": int(stream["width"]),
        "height": int(stream["height"]),
        "fps": float(numerator) / float(denominator or 1),
        "num_frames": int(frames) if frames.isdigit() else None,
    }


def decode_video(
    path: str,
    size: Sequence[int] | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    grey: bool = False,
) -> np.ndarray:
    """Decodes a video file with ffmpeg.

    Args:
        path: a video file ffmpeg can read (.avi, .mp4, ...).
        size: (height, width) to resize every frame to (stretching); None
            keeps the file's size.
        fps: resample to this frame rate (frames are dropped or repeated);
            None keeps the file's frames.
        max_frames: stop after this many frames.
        grey: one channel instead of RGB.

    Returns:
        uint8 frames `[T, H, W, C]`, C = 3 (or 1 when `grey`).

    Raises:
        FileNotFoundError: no such file.
        VideoDecodeError: ffmpeg is missing, fails or finds no frame.
    """
    if size is None:
        info = probe_video(path)
        height, width = info["height"], info["width"]
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"video file not found: {path}")
        height, width = (int(s) for s in size)
    filters = [f"fps={fps}"] if fps else []
    filters.append(f"scale={width}:{height}")
    channels = 1 if grey else 3
    command = [_ffmpeg(), "-v", "error", "-nostdin", "-i", path, "-vf", ",".join(filters)]
    if max_frames:
        command += ["-frames:v", str(int(max_frames))]
    command += ["-f", "rawvideo", "-pix_fmt", "gray" if grey else "rgb24", "-"]
    completed = subprocess.run(command, capture_output=True, check=False)
    frame_bytes = height * width * channels
    if completed.returncode or len(completed.stdout) < frame_bytes:
        message = completed.stderr.decode(errors="replace").strip() or "no frames decoded"
        raise VideoDecodeError(f"ffmpeg cannot decode {path}: {message}")
    count = len(completed.stdout) // frame_bytes
    frames = np.frombuffer(completed.stdout[: count * frame_bytes], np.uint8)
    return frames.reshape(count, height, width, channels)


def _window_indices(num_frames, clip_length: int, start, stride: int = 1):
    """Frame indices start, start+stride, ... (clip_length of them), looping short videos."""
    offsets = tf.range(clip_length) * stride
    return tf.math.floormod(start + offsets, tf.maximum(num_frames, 1))


def sample_clip(
    video,
    clip_length: int,
    mode: str = "center",
    stride: int = 1,
    seed=None,
    start=None,
):
    """One window of `clip_length` frames (every `stride`-th) of `video` [T, H, W, C].

    Args:
        mode: "random" (a random temporal crop: the start is drawn uniformly
            from the valid starts, from the stateless `seed` if given),
            "center" or "start" (the given `start`).
        seed: shape [2] int seed for a stateless random start.

    Videos shorter than the window are looped (frame indices wrap around).
    """
    video = tf.convert_to_tensor(video)
    num_frames = tf.shape(video)[0]
    span = (clip_length - 1) * stride + 1
    last_start = tf.maximum(num_frames - span, 0)
    if mode == "random":
        if seed is None:
            start = tf.random.uniform([], 0, last_start + 1, tf.int32)
        else:
            start = tf.random.stateless_uniform([], seed, 0, last_start + 1, tf.int32)
    elif mode == "center":
        start = last_start // 2
    elif mode != "start" or start is None:
        raise ValueError(f"mode must be 'random', 'center' or 'start' (with start), got {mode!r}.")
    return tf.gather(video, _window_indices(num_frames, clip_length, start, stride))


def multi_clip_windows(video, clip_length: int, num_clips: int, stride: int = 1):
    """`num_clips` evenly spaced windows of a video: `[num_clips, clip_length, H, W, C]`."""
    video = tf.convert_to_tensor(video)
    num_frames = tf.shape(video)[0]
    span = (clip_length - 1) * stride + 1
    last_start = tf.maximum(num_frames - span, 0)
    if num_clips == 1:
        starts = tf.reshape(last_start // 2, [1])
    else:
        starts = tf.cast(
            tf.round(tf.linspace(0.0, tf.cast(last_start, tf.float32), num_clips)), tf.int32
        )
    indices = tf.map_fn(
        lambda s: _window_indices(num_frames, clip_length, s, stride),
        starts,
        fn_output_signature=tf.int32,
    )
    return tf.gather(video, indices)


def normalise_clip(clip):
    """uint8 frames -> float32 in [0, 1] (float input is returned as float32 unchanged)."""
    clip = tf.convert_to_tensor(clip)
    if clip.dtype == tf.uint8:
        return tf.cast(clip, tf.float32) / 255.0
    return tf.cast(clip, tf.float32)


def resize_clip(clip, size: Sequence[int], crop: str = "center", seed=None):
    """Resizes frames so the shorter side fits `size`, then crops to `size` (H, W).

    `crop` is "center" or "random" (a random spatial crop, the same for every
    frame; stateless when `seed` is given). Returns float32.
    """
    clip = tf.cast(tf.convert_to_tensor(clip), tf.float32)
    height, width = int(size[0]), int(size[1])
    shape = tf.shape(clip)
    scale = tf.maximum(
        height / tf.cast(shape[1], tf.float32), width / tf.cast(shape[2], tf.float32)
    )
    new_h = tf.maximum(
        height, tf.cast(tf.math.ceil(tf.cast(shape[1], tf.float32) * scale), tf.int32)
    )
    new_w = tf.maximum(
        width, tf.cast(tf.math.ceil(tf.cast(shape[2], tf.float32) * scale), tf.int32)
    )
    clip = tf.image.resize(clip, tf.stack([new_h, new_w]), antialias=True)
    target = tf.stack([shape[0], height, width, shape[3]])
    if crop == "random":
        if seed is None:
            return tf.image.random_crop(clip, target)
        return tf.image.stateless_random_crop(clip, target, seed=seed)
    if crop != "center":
        raise ValueError(f"crop must be 'center' or 'random', got {crop!r}.")
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return clip[:, top : top + height, left : left + width, :]


def decode_video_op(path, size: Sequence[int], fps: float | None = None, max_frames=None):
    """`decode_video` as a TF op (for `tf.data`): string path -> uint8 [T, H, W, 3]."""

    def decode(p):
        return decode_video(p.decode(), size=size, fps=fps, max_frames=max_frames)

    frames = tf.numpy_function(decode, [path], tf.uint8, stateful=False)
    return tf.ensure_shape(frames, [None, int(size[0]), int(size[1]), 3])


def video_file_dataset(
    paths: Sequence[str],
    labels: Sequence[int],
    clip_length: int,
    size: Sequence[int],
    fps: float | None = None,
    training: bool = False,
    cache: str | bool = True,
    seed: int = 0,
) -> tf.data.Dataset:
    """`(clip float32 [clip_length, H, W, 3], label int32)` from video files.

    Decoding runs in parallel (ffmpeg subprocesses); the decoded frames are
    cached (`cache=True`: in memory; a string: a cache file prefix; False:
    decoded every epoch), then a clip is sampled: a random temporal crop when
    `training`, the centre window otherwise. Unbatched, prefetched. A
    training dataset is endless (the decoded videos repeat, each pass with
    new random windows); an evaluation dataset makes one pass.
    """
    if len(paths) != len(labels):
        raise ValueError(f"{len(paths)} paths but {len(labels)} labels.")
    if not len(paths):
        raise ValueError("no video files given.")
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(list(paths)), tf.constant(np.asarray(labels, np.int32)))
    )
    dataset = dataset.map(
        lambda p, y: (decode_video_op(p, size, fps), y),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if cache:
        dataset = dataset.cache("" if cache is True else cache)
    if training:
        dataset = dataset.repeat()
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda example, s: (sample_clip(example[0], clip_length, "random", seed=s), example[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        dataset = dataset.map(
            lambda v, y: (sample_clip(v, clip_length, "center"), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    dataset = dataset.map(lambda c, y: (normalise_clip(c), y))
    return dataset.prefetch(tf.data.AUTOTUNE)
