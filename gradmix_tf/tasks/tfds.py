"""A task whose streams a config names by TFDS dataset name.

    config.data.task = "tfds"
    config.data.task_options = {
        "image_shape": (32, 32, 3),
        "sources": [
            {"dataset": "mnist", "classes": (0, 1, 2, 3, 4), "resize_method": "pad"},
            {"dataset": "usps", "classes": (5, 6, 7, 8, 9), "name": "usps_5_9"},
        ],
        "target": {"dataset": "svhn_cropped", "train_split": "train", "test_split": "test"},
        "data_dir": "~/tensorflow_datasets",
        "manual_dir": "~/manual",   # holding usps/ ...
    }

Each source is `labelled_stream(**spec)`, the target `target_split(**spec)`
(gradmix_tf/datasets/loading.py), with the task's `image_shape`, data and
manual dirs, `max_per_class`, `seed` and `shots_per_class` filled in.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

from gradmix_tf.data.streams import DataError, MultiStreamData
from gradmix_tf.datasets import loading

_SOURCE_KEYS = ("dataset", "split", "name", "classes", "max_per_class", "resize_method")
_TARGET_KEYS = tuple(
    p
    for p in inspect.signature(loading.target_split).parameters
    if p not in ("shots_per_class", "seed", "image_shape", "loading")
)


def _spec(spec, allowed: Sequence[str], what: str) -> dict:
    spec = dict(spec)
    unknown = sorted(set(spec) - set(allowed))
    if unknown or "dataset" not in spec:
        raise DataError(
            f"{what} {spec}: unknown keys {unknown} or no 'dataset'; allowed keys: {list(allowed)}."
        )
    for key in ("classes",):
        if spec.get(key) is not None:
            spec[key] = tuple(int(c) for c in spec[key])
    return spec


def tfds_task(
    seed: int = 0,
    shots_per_class: int | None = 10,
    *,
    max_per_class: int | None = None,
    sources: Sequence[Mapping] = (),
    target: Mapping | None = None,
    image_shape: Sequence[int] | None = None,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    download: bool = False,
    builder_kwargs: Mapping | None = None,
) -> MultiStreamData:
    """Builds a `MultiStreamData` from TFDS names (see the module docstring).

    Args:
        sources: one mapping a source stream, keys from `_SOURCE_KEYS`.
        target: the target's mapping, keys of `loading.target_split`.
        image_shape: (H, W, C) every stream is converted to.
        data_dir, manual_dir, download: see `prepared_builder`.
        builder_kwargs: passed to every builder (e.g. `verify_checksums`).
    """
    if target is None:
        raise DataError("task 'tfds' needs task_options.target = {'dataset': ..., ...}.")
    common = {
        "data_dir": data_dir,
        "manual_dir": manual_dir,
        "download": download,
        "image_shape": None if image_shape is None else tuple(int(d) for d in image_shape),
        **dict(builder_kwargs or {}),
    }
    streams = []
    for spec in sources:
        spec = _spec(spec, _SOURCE_KEYS, "source")
        spec.setdefault("max_per_class", max_per_class)
        streams.append(loading.labelled_stream(**spec, **common))
    spec = _spec(target, _TARGET_KEYS, "target")
    spec.setdefault("max_per_class", max_per_class)
    split = loading.target_split(**spec, shots_per_class=shots_per_class, seed=seed, **common)
    return MultiStreamData(streams, split)
