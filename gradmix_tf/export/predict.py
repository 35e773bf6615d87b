"""Runs an exported target model on image files (PNG or JPEG) or, for a video model, video files.

An export whose `input_shape` has four axes `(T, H, W, C)` is a video model:
its files are decoded with ffmpeg (`gradmix_tf.data.clips.decode_video`) at
the model's frame size, and the class probabilities are averaged over
`num_clips` evenly spaced clips of T frames (multi-clip averaging).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from gradmix_tf.data.clips import (
    VIDEO_EXTENSIONS,
    decode_video,
    multi_clip_windows,
    normalise_clip,
)
from gradmix_tf.export.saved_model import load_exported


def load_image(path: str, input_shape: Sequence[int]) -> np.ndarray:
    """Reads an image file as float32 [H, W, C] in [0, 1], resized to `input_shape`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable image.
    """
    height, width, channels = input_shape
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            image = image.resize((width, height), Image.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read {path} as an image (PNG or JPEG): {error}") from None
    if channels == 1:
        pixels = pixels[..., None]
    return pixels


def is_video_file(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTENSIONS)


def multi_clip_predict(predict_fn, video, clip_length: int, num_clips: int, stride: int = 1):
    """Class probabilities of one video, averaged over `num_clips` evenly spaced clips.

    Args:
        predict_fn: float32 clips `[N, clip_length, H, W, C]` in [0, 1] ->
            probabilities `[N, classes]` (e.g. an export's `serve`).
        video: uint8 or [0, 1] float frames `[T, H, W, C]` of the model's frame size.
    """
    windows = normalise_clip(multi_clip_windows(video, clip_length, num_clips, stride))
    probabilities = tf.convert_to_tensor(predict_fn(windows))
    return tf.reduce_mean(probabilities, axis=0)


def video_probabilities(
    serve, path: str, input_shape: Sequence[int], num_clips: int, fps: float | None
) -> np.ndarray:
    """Class probabilities of one video file, averaged over `num_clips` clips."""
    clip_length, height, width, channels = input_shape
    if not is_video_file(path):
        raise ValueError(
            f"{path}: this export is a video model (clips of shape {list(input_shape)}); give "
            f"video files ({', '.join(VIDEO_EXTENSIONS)})."
        )
    video = decode_video(path, size=(height, width), fps=fps, grey=channels == 1)
    return multi_clip_predict(serve, video, clip_length, num_clips).numpy()


def predict_files(
    export_dir: str,
    paths: Sequence[str],
    top_k: int = 1,
    num_clips: int = 3,
    fps: float | None = None,
):
    """Classifies image files, or video files for a video model, with an export.

    Args:
        num_clips: video models: clips averaged a video.
        fps: video models: decode at this frame rate (None: the file's).

    Returns:
        one list per file of `(class_name, probability)` pairs, best first.
    """
    if not paths:
        raise ValueError("no image files given (or video files, for a video model).")
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}.")
    serve, metadata = load_exported(export_dir)
    input_shape = metadata["input_shape"]
    if len(input_shape) == 4:
        probabilities = np.stack(
            [video_probabilities(serve, p, input_shape, num_clips, fps) for p in paths]
        )
    else:
        videos = [p for p in paths if is_video_file(p)]
        if videos:
            raise ValueError(
                f"{videos[0]} is a video but this export classifies images of shape "
                f"{list(input_shape)}: give PNG or JPEG files, or a video model's export."
            )
        images = np.stack([load_image(p, input_shape) for p in paths])
        probabilities = serve(images).numpy()
    names = metadata["class_names"]
    results = []
    for row in probabilities:
        best = np.argsort(-row)[:top_k]
        results.append([(names[i], float(row[i])) for i in best])
    return results
