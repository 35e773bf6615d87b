"""Exports the target model (trunk + h_T) as a TensorFlow SavedModel for inference.

The SavedModel has one endpoint, `serve`: float32 images of the target's shape
`[batch, H, W, C]`, values in [0, 1], to class probabilities `[batch, C]`.
Beside it, `gradmix_export.json` records the class names, the input shape and
the value range, so tools (`launch.predict`) need nothing else. Only inference
is tracked: source heads, mixing state and the optimizer stay out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import keras
import tensorflow as tf

METADATA_FILE = "gradmix_export.json"


def export_target_model(
    model: keras.Model,
    path: str,
    input_shape: Sequence[int],
    class_names: Sequence[str],
) -> str:
    """Writes the SavedModel and its metadata to `path`; returns `path`.

    Args:
        model: a built GradMixModel (its `call` is target inference).
        path: the export directory (replaced if it exists).
        input_shape: one example's shape, e.g. (32, 32, 3).
        class_names: the target's class names, in label order.
    """
    archive = keras.export.ExportArchive()
    # Only inference: the trunk and h_T, not source heads, GradMix state or optimizer.
    archive.track(model.trunk)
    archive.track(model.heads[0])
    archive.add_endpoint(
        name="serve",
        fn=lambda images: model(images, training=False),
        input_signature=[tf.TensorSpec([None, *input_shape], tf.float32, name="images")],
    )
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)
    archive.write_out(path, verbose=False)
    metadata = {
        "class_names": list(class_names),
        "input_shape": list(input_shape),
        "input_range": [0.0, 1.0],
        "endpoint": "serve",
    }
    with open(os.path.join(path, METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2)
    return path


def load_exported(path: str):
    """Loads an export: returns (serve function, metadata dict).

    Raises:
        FileNotFoundError: when `path` is not an export written by
            `export_target_model`.
    """
    metadata_path = os.path.join(path, METADATA_FILE)
    if not os.path.exists(os.path.join(path, "saved_model.pb")) or not os.path.exists(
        metadata_path
    ):
        raise FileNotFoundError(
            f"{path} is not a gradmix-tf export (no saved_model.pb or {METADATA_FILE}). "
            "Pass the export/ directory that `python -m launch.train` writes."
        )
    with open(metadata_path) as f:
        metadata = json.load(f)
    loaded = tf.saved_model.load(path)

    def serve(images):
        return loaded.serve(images)  # keeps `loaded`, and so its variables, alive

    return serve, metadata
