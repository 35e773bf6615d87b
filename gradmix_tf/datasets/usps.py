"""USPS handwritten digits: 16x16 grey, the classic split train 7,291 / test 2,007."""

from __future__ import annotations

import bz2

import numpy as np
import tensorflow_datasets as tfds

from gradmix_tf.datasets.manual_builder import ManualBuilder

_CLASS_NAMES = [str(d) for d in range(10)]
_SIDE = 16


def read_usps_h5(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads one split of the common `usps.h5`.

    Returns:
        (images uint8 [N, 16, 16], labels int64 [N]): the file's [0, 1] floats
        scaled to 0..255 and rounded.
    """
    try:
        import h5py
    except ImportError as err:
        raise ImportError(
            f"reading {path} needs h5py: `pip install h5py`, or place LIBSVM's usps.bz2 / "
            "usps.t.bz2 instead."
        ) from err
    with h5py.File(path, "r") as f:
        if split not in f:
            raise ValueError(f"{path} has no group '{split}' (groups: {sorted(f)}).")
        data = np.asarray(f[split]["data"], dtype=np.float64)
        labels = np.asarray(f[split]["target"]).astype(np.int64).reshape(-1)
    images = np.round(np.clip(data, 0.0, 1.0) * 255.0).astype(np.uint8)
    return images.reshape(-1, _SIDE, _SIDE), labels


def read_usps_libsvm(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads LIBSVM's `usps.bz2` / `usps.t.bz2`: `<digit + 1> <index>:<value in [-1, 1]> ...`.

    Returns:
        (images uint8 [N, 16, 16], labels int64 [N]): values mapped to
        round((v + 1) / 2 * 255); an index left out of a line means 0.
    """
    images, labels = [], []
    with bz2.open(path, "rt") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            pixels = np.zeros(_SIDE * _SIDE, dtype=np.float64)
            try:
                label = int(float(fields[0])) - 1
                for field in fields[1:]:
                    index, value = field.split(":")
                    pixels[int(index) - 1] = float(value)
            except (ValueError, IndexError) as err:
                raise ValueError(f"{path}, line {number}: not LIBSVM USPS data ({err}).") from err
            if not 0 <= label <= 9:
                raise ValueError(f"{path}, line {number}: label {label + 1} is not in 1..10.")
            images.append(pixels)
            labels.append(label)
    scaled = np.round((np.clip(np.stack(images), -1.0, 1.0) + 1.0) / 2.0 * 255.0)
    return scaled.astype(np.uint8).reshape(-1, _SIDE, _SIDE), np.asarray(labels, np.int64)


class Usps(ManualBuilder):
    """USPS digits from `usps.h5` or from LIBSVM's `usps.bz2` + `usps.t.bz2`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: usps.h5 or LIBSVM's bz2 files."}
    MANUAL_FILES = {
        "train": [("usps.h5",), ("usps.bz2",)],
        "test": [("usps.h5",), ("usps.t.bz2",)],
    }
    # The LIBSVM release (also checked by torchvision's USPS dataset).
    CANONICAL_MD5 = {
        "usps.bz2": "ec16c51db3855ca6c91edd34d0e9b197",
        "usps.t.bz2": "8ea070ee2aca1ac39742fdd1ef5ed118",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Place in manual_dir either
      usps.h5  (the widely circulated HDF5 file: groups 'train' and 'test',
                each with 'data' [N, 256] floats in [0, 1] and 'target' [N])
    or LIBSVM's release (its MD5 is checked)
      usps.bz2 and usps.t.bz2  from
      https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass.html#usps
    Reading usps.h5 needs h5py. From arrays:
    gradmix_tf.datasets.manual_files.write_usps_h5 / write_usps_libsvm.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=(
                "USPS: 16x16 grey handwritten digits from U.S. Postal Service envelopes, "
                "digits 0-9, train 7,291 / test 2,007. The id is '<split>_<row>'."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(_SIDE, _SIDE, 1)),
                    "label": tfds.features.ClassLabel(names=_CLASS_NAMES),
                    "id": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass.html#usps",
            citation=(
                "@article{hull1994database, title={A database for handwritten text recognition "
                "research}, author={Hull, Jonathan J.}, journal={IEEE TPAMI}, volume={16}, "
                "number={5}, pages={550--554}, year={1994}}"
            ),
        )

    def _generate_examples(self, split, files):
        (path,) = files
        if path.endswith(".h5"):
            images, labels = read_usps_h5(path, split)
        else:
            images, labels = read_usps_libsvm(path)
        for row, (image, label) in enumerate(zip(images, labels)):
            key = f"{split}_{row:05d}"
            yield key, {"image": image[..., None], "label": int(label), "id": key}
