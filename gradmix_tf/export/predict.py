"""Runs an exported target model on image files (PNG or JPEG, any size)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

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


def predict_files(export_dir: str, paths: Sequence[str], top_k: int = 1):
    """Classifies image files with an export.

    Returns:
        one list per file of `(class_name, probability)` pairs, best first.
    """
    if not paths:
        raise ValueError("no image files given.")
    serve, metadata = load_exported(export_dir)
    images = np.stack([load_image(p, metadata["input_shape"]) for p in paths])
    probabilities = serve(images).numpy()
    names = metadata["class_names"]
    results = []
    for row in probabilities:
        best = np.argsort(-row)[:top_k]
        results.append([(names[i], float(row[i])) for i in best])
    return results
