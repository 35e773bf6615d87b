"""Writers that turn numpy arrays into each builder's manual-download format.

They make a `manual_dir` from arrays you already have (e.g. the test data in
`../shared/data/digits/*.npz`), in exactly the layout the released files have,
so the builders read them as they would read the originals:

- `write_mnist_m`: `mnist_m_<split>/<8 digits>.png` + `mnist_m_<split>_labels.txt`;
- `write_usps_h5`: `usps.h5` (groups `train` / `test`, `data` [N, 256] in [0, 1], `target` [N]);
- `write_usps_libsvm`: `usps.bz2` / `usps.t.bz2` (`<digit + 1> <i>:<v in [-1, 1]> ...`);
- `write_syn_digits_mat`: `synth_<split>_32x32.mat` (`X` [32, 32, 3, N], `y` [N, 1]).

`write_from_npz(dataset, npz_path, manual_dir)` dispatches on the dataset
name; an npz holds `x_<split>` / `y_<split>` pairs, or `x` / `y` for one split.

Files written here are not the released bytes: build checksummed datasets
(USPS from LIBSVM's files) with `verify_checksums=False`.
"""

from __future__ import annotations

import bz2
import os
from collections.abc import Mapping

import numpy as np

from gradmix_tf.data.checks import DataError


def _checked(images, labels, shape: tuple[int, ...], name: str) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    labels = np.asarray(labels).reshape(-1)
    if images.dtype != np.uint8:
        raise DataError(f"{name}: images must be uint8 in 0..255, got {images.dtype}.")
    if images.shape[1:] != shape:
        raise DataError(
            f"{name}: images must be [N, {', '.join(map(str, shape))}], got {images.shape}."
        )
    if len(images) != len(labels):
        raise DataError(f"{name}: {len(images)} images but {len(labels)} labels.")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{name}: labels must be digits 0..9.")
    return images, labels.astype(np.int64)


def write_mnist_m(manual_dir: str, split: str, images, labels) -> list[str]:
    """Writes one MNIST-M split: PNG files named `%08d.png` and its labels file.

    Args:
        images: uint8 `[N, 32, 32, 3]`.
        labels: `[N]` digits.

    Returns:
        The paths written (the folder and the labels file).
    """
    from PIL import Image

    images, labels = _checked(images, labels, (32, 32, 3), f"mnist_m {split}")
    folder = os.path.join(manual_dir, f"mnist_m_{split}")
    os.makedirs(folder, exist_ok=True)
    lines = []
    for index, (image, label) in enumerate(zip(images, labels)):
        name = f"{index:08d}.png"
        Image.fromarray(image, mode="RGB").save(os.path.join(folder, name))
        lines.append(f"{name} {label}\n")
    labels_path = os.path.join(manual_dir, f"mnist_m_{split}_labels.txt")
    with open(labels_path, "w") as f:
        f.writelines(lines)
    return [folder, labels_path]


def write_usps_h5(manual_dir: str, splits: Mapping[str, tuple]) -> list[str]:
    """Writes `usps.h5` with a group a split: `data` [N, 256] float64 in [0, 1], `target` [N].

    Args:
        splits: split name -> (images uint8 `[N, 16, 16]`, labels `[N]`).
    """
    import h5py

    os.makedirs(manual_dir, exist_ok=True)
    path = os.path.join(manual_dir, "usps.h5")
    with h5py.File(path, "w") as f:
        for split, (images, labels) in splits.items():
            images, labels = _checked(images, labels, (16, 16), f"usps {split}")
            group = f.create_group(split)
            group.create_dataset("data", data=images.reshape(len(images), -1) / 255.0)
            group.create_dataset("target", data=labels)
    return [path]


def write_usps_libsvm(manual_dir: str, split: str, images, labels) -> list[str]:
    """Writes LIBSVM's USPS format: `usps.bz2` (train) or `usps.t.bz2` (test).

    Pixel values become `v / 255 * 2 - 1` with 6 decimals, which the builder
    maps back to the same uint8 values.
    """
    if split not in ("train", "test"):
        raise DataError(f"usps has splits 'train' and 'test', got {split!r}.")
    images, labels = _checked(images, labels, (16, 16), f"usps {split}")
    os.makedirs(manual_dir, exist_ok=True)
    path = os.path.join(manual_dir, "usps.bz2" if split == "train" else "usps.t.bz2")
    values = images.reshape(len(images), -1).astype(np.float64) / 255.0 * 2.0 - 1.0
    with bz2.open(path, "wt") as f:
        for label, row in zip(labels, values):
            pixels = " ".join(f"{i}:{v:.6f}" for i, v in enumerate(row, start=1))
            f.write(f"{label + 1} {pixels}\n")
    return [path]


def write_syn_digits_mat(manual_dir: str, split: str, images, labels) -> list[str]:
    """Writes `synth_<split>_32x32.mat`: `X` uint8 [32, 32, 3, N], `y` [N, 1]."""
    from scipy import io as scipy_io

    images, labels = _checked(images, labels, (32, 32, 3), f"syn_digits {split}")
    os.makedirs(manual_dir, exist_ok=True)
    path = os.path.join(manual_dir, f"synth_{split}_32x32.mat")
    scipy_io.savemat(path, {"X": np.moveaxis(images, 0, -1), "y": labels.reshape(-1, 1)})
    return [path]


def npz_splits(
    npz_path: str, default_split: str = "test"
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The `(images, labels)` of each split in an npz: `x_<split>`/`y_<split>`, or `x`/`y`."""
    with np.load(npz_path) as data:
        keys = set(data.files)
        splits = {}
        for key in sorted(keys):
            if key.startswith("x_") and f"y_{key[2:]}" in keys:
                splits[key[2:]] = (data[key], data[f"y_{key[2:]}"])
        if not splits and {"x", "y"} <= keys:
            splits[default_split] = (data["x"], data["y"])
    if not splits:
        raise DataError(
            f"{npz_path} holds {sorted(keys)}: expected x_<split>/y_<split> pairs or x/y."
        )
    return splits


def write_from_npz(
    dataset: str,
    npz_path: str,
    manual_dir: str,
    default_split: str = "test",
    usps_format: str = "h5",
) -> list[str]:
    """Writes `dataset`'s manual files from an npz of uint8 arrays (see `npz_splits`).

    Args:
        dataset: `mnist_m`, `usps` or `syn_digits`.
        default_split: the split of an npz that holds only `x` / `y`.
        usps_format: `h5` (usps.h5) or `libsvm` (usps.bz2 / usps.t.bz2).

    Returns:
        The paths written.
    """
    splits = npz_splits(npz_path, default_split)
    written = []
    if dataset == "mnist_m":
        for split, (x, y) in splits.items():
            written += write_mnist_m(manual_dir, split, x, y)
    elif dataset == "usps" and usps_format == "h5":
        written += write_usps_h5(manual_dir, splits)
    elif dataset == "usps" and usps_format == "libsvm":
        for split, (x, y) in splits.items():
            written += write_usps_libsvm(manual_dir, split, x, y)
    elif dataset == "syn_digits":
        for split, (x, y) in splits.items():
            written += write_syn_digits_mat(manual_dir, split, x, y)
    else:
        raise DataError(
            f"no npz writer for dataset {dataset!r} (format {usps_format!r}); writers exist for "
            "mnist_m, usps (h5 or libsvm) and syn_digits."
        )
    return written
