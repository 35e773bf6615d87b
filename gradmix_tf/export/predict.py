"""Runs an exported target model on image files (PNG or JPEG) or, for a video model, video files.

An export whose `input_shape` has four axes `(T, H, W, C)` is a video model:
its files are decoded with ffmpeg (`gradmix_tf.data.clips.decode_video`) at
the model's frame size, and the class probabilities are averaged over
`num_clips` evenly spaced clips of T frames (multi-clip averaging).

Images are read by PIL at their bit depth: 8-bit files are divided by 255,
16-bit grey PNGs by 65535 (16-bit RGB(A) PNGs are read by PIL as 8-bit),
then converted to the model's channels (grey or RGB; palette expanded,
alpha dropped) and resized bilinearly to the model's input.

`classify_files` classifies every readable file and keeps, for each other
one, why it failed (a directory, a missing file, not an image); it warns
about images much smaller than the model's input. `predict_files` is the
strict form: it raises the first file's error.
"""

from __future__ import annotations

import dataclasses
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

SIXTEEN_BIT_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
"""PIL's modes of a 16-bit grey PNG: its values are divided by 65535 (not clipped to 8 bits)."""


class FileError(ValueError):
    """A file that cannot be classified; `reason` says why, without the path."""

    def __init__(self, path: str, reason: str, message: str | None = None):
        super().__init__(message or f"{path}: {reason}")
        self.path = path
        self.reason = reason


class MissingFileError(FileError, FileNotFoundError):
    """The file does not exist."""


def check_file(path: str, what: str = "image") -> None:
    """Raises a FileError when `path` is a directory or does not exist."""
    if os.path.isdir(path):
        raise FileError(path, "is a directory", f"{path} is a directory, not an {what} file")
    if not os.path.isfile(path):
        raise MissingFileError(path, "no such file", f"{what} file not found: {path}")


def image_pixels(image: Image.Image, input_shape: Sequence[int]) -> np.ndarray:
    """An open PIL image as float32 `input_shape` = [H, W, C] in [0, 1] (bilinear resize).

    8-bit images (grey, RGB, palette, with or without alpha; 16-bit RGB(A) PNGs,
    which PIL reads as 8-bit) are converted to grey or RGB by PIL (alpha is
    dropped) and divided by 255; 16-bit grey PNGs are divided by 65535.
    """
    height, width, channels = input_shape
    if image.mode in SIXTEEN_BIT_GREY_MODES:
        grey = np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)
        resized = Image.fromarray(grey).resize((width, height), Image.BILINEAR)  # mode "F"
        return np.repeat(np.asarray(resized, np.float32)[..., None], channels, axis=-1)
    image = image.convert("L" if channels == 1 else "RGB")
    image = image.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return pixels[..., None] if channels == 1 else pixels


def read_image(path: str, input_shape: Sequence[int]) -> tuple[np.ndarray, tuple[int, int]]:
    """An image file as `image_pixels`, and its own size `(width, height)`.

    Raises:
        MissingFileError (a FileNotFoundError): the file does not exist.
        FileError (a ValueError): a directory, or not a readable image.
    """
    check_file(path)
    try:
        with Image.open(path) as image:
            return image_pixels(image, input_shape), image.size
    except Image.DecompressionBombError as error:  # more pixels than PIL decodes
        raise FileError(
            path,
            f"too large to read: {error}",
            f"cannot read {path} as an image: too large ({error})",
        ) from None
    except (UnidentifiedImageError, OSError) as error:
        raise FileError(
            path,
            f"not a readable image (PNG or JPEG): {error}",
            f"cannot read {path} as an image (PNG or JPEG): {error}",
        ) from None


def size_warning(size: tuple[int, int], input_shape: Sequence[int]) -> str | None:
    """A warning when an image is much smaller (a side < half) than the model's input."""
    (width, height), (model_height, model_width) = size, input_shape[:2]
    if 2 * width >= model_width and 2 * height >= model_height:
        return None
    return (
        f"the image is {width}x{height} pixels, much smaller than the model's input of "
        f"{model_width}x{model_height}: it is upscaled, so its prediction may mean little."
    )


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
        reason = (
            f"this export is a video model (clips of shape {list(input_shape)}); give "
            f"video files ({', '.join(VIDEO_EXTENSIONS)})."
        )
        raise FileError(path, reason)
    check_file(path, "video")
    video = decode_video(path, size=(height, width), fps=fps, grey=channels == 1)
    return multi_clip_predict(serve, video, clip_length, num_clips).numpy()


@dataclasses.dataclass
class FilePrediction:
    """What `classify_files` made of one file.

    Attributes:
        path: the file, as given.
        classes: `(class_name, probability)` pairs, best first; empty when `error`.
        error: why the file could not be classified (a FileError, or a
            VideoDecodeError of ffmpeg), or None.
        warning: e.g. an image much smaller than the model's input, or None.
    """

    path: str
    classes: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    error: ValueError | None = None
    warning: str | None = None

    def report_line(self) -> str:
        """`PATH: class (p), ...` for stdout, or `error: PATH: reason` for stderr."""
        if self.error is not None:
            reason = self.error.reason if isinstance(self.error, FileError) else self.error
            return f"error: {self.path}: {reason}"
        ranked = ", ".join(f"{name} ({probability:.3f})" for name, probability in self.classes)
        return f"{self.path}: {ranked}"


def load_export(export_dir: str):
    """`load_exported`, with every failure as one FileNotFoundError or ValueError line."""
    if not os.path.isdir(export_dir):
        raise FileNotFoundError(
            f"export directory not found: {export_dir}. Pass the export/ directory that "
            "`python -m launch.train` writes (WORKDIR/export)."
        )
    try:
        serve, metadata = load_exported(export_dir)
        input_shape, class_names = list(metadata["input_shape"]), list(metadata["class_names"])
    except FileNotFoundError:
        raise
    except Exception as error:  # any failure to load makes it unusable (a damaged file)
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(
            f"cannot load the export {export_dir}: {detail}. A damaged export: rerun "
            "`python -m launch.train --force_eval` on its work directory to write it again."
        ) from None
    return serve, input_shape, class_names


def classify_files(
    export_dir: str,
    paths: Sequence[str],
    top_k: int = 1,
    num_clips: int = 3,
    fps: float | None = None,
) -> list[FilePrediction]:
    """Classifies every readable file; the others carry their error (see `predict_files`).

    Raises:
        FileNotFoundError, ValueError: no paths, a bad argument, or an export
            that cannot be loaded (one line each).
    """
    if not paths:
        raise ValueError("no image files given (or video files, for a video model).")
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}.")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}.")
    serve, input_shape, names = load_export(export_dir)
    results = [FilePrediction(path) for path in paths]
    rows = {}  # index in `results` -> class probabilities
    if len(input_shape) == 4:
        for i, result in enumerate(results):
            try:
                rows[i] = video_probabilities(serve, result.path, input_shape, num_clips, fps)
            except ValueError as error:  # FileError and VideoDecodeError
                result.error = error
    else:
        images = {}
        for i, result in enumerate(results):
            try:
                images[i] = image_file(result.path, input_shape, result)
            except FileError as error:
                result.error = error
        if images:
            probabilities = serve(np.stack(list(images.values()))).numpy()
            rows = dict(zip(images, probabilities))
    for i, row in rows.items():
        best = np.argsort(-row)[:top_k]
        results[i].classes = [(names[j], float(row[j])) for j in best]
    return results


def image_file(path: str, input_shape: Sequence[int], result: FilePrediction) -> np.ndarray:
    """One image file's pixels for an image export; sets `result.warning` when it is small."""
    if is_video_file(path):
        reason = (
            f"is a video but this export classifies images of shape {list(input_shape)}: "
            "give PNG or JPEG files, or a video model's export."
        )
        raise FileError(path, reason, f"{path} {reason}")
    pixels, size = read_image(path, input_shape)
    result.warning = size_warning(size, input_shape)
    return pixels


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

    Raises:
        ValueError (FileError, VideoDecodeError; a missing file: MissingFileError,
            also a FileNotFoundError): the first file that cannot be classified.
            `classify_files` classifies the others and reports every such file.
    """
    results = classify_files(export_dir, paths, top_k, num_clips, fps)
    for result in results:
        if result.error is not None:
            raise result.error
    return [result.classes for result in results]
