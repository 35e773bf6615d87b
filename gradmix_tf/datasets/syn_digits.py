"""Syn Digits (Ganin & Lempitsky, 2015): synthetic digits rendered from Windows fonts."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from gradmix_tf.datasets.manual_builder import (
    GANIN_2015_CITATION,
    ManualBuilder,
    digit_image_features,
)


def read_syn_digits_mat(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads `synth_<split>_32x32.mat` (SVHN's layout: `X` [32, 32, 3, N], `y` [N, 1]).

    Returns:
        (images uint8 [N, 32, 32, 3], labels int64 [N]); a label 10 means 0.
    """
    try:
        from scipy import io as scipy_io
    except ImportError as err:
        raise ImportError(f"reading {path} needs scipy: `pip install scipy`.") from err
    data = scipy_io.loadmat(path)
    if "X" not in data or "y" not in data:
        raise ValueError(f"{path} has no 'X' and 'y' arrays: not a Syn Digits .mat file.")
    images = np.moveaxis(np.asarray(data["X"], dtype=np.uint8), -1, 0)
    labels = np.asarray(data["y"]).astype(np.int64).reshape(-1) % 10
    if images.shape[1:] != (32, 32, 3) or len(images) != len(labels):
        raise ValueError(
            f"{path}: expected X [32, 32, 3, N] and y [N, 1], got "
            f"{data['X'].shape} and {data['y'].shape}."
        )
    return images, labels


class SynDigits(ManualBuilder):
    """Syn Digits: 32x32 colour digits, train 479,400 / test 9,553."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: synth_train_32x32.mat, synth_test_32x32.mat."}
    MANUAL_FILES = {
        "train": [("synth_train_32x32.mat",)],
        "test": [("synth_test_32x32.mat",)],
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Place in manual_dir the two files of the Syn Digits release (SynthDigits.zip
    from the DANN project page of Ganin & Lempitsky, unzipped):
      synth_train_32x32.mat  and  synth_test_32x32.mat
    Reading them needs scipy. From arrays:
    gradmix_tf.datasets.manual_files.write_syn_digits_mat.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=(
                "Syn Digits: 32x32 RGB images of digits rendered from fonts with varied "
                "position, orientation, colour and blur (SVHN-like), digits 0-9. "
                "The id is '<split>_<index>'."
            ),
            features=digit_image_features(),
            supervised_keys=("image", "label"),
            homepage="http://yaroslav.ganin.net/",
            citation=GANIN_2015_CITATION,
        )

    def _generate_examples(self, split, files):
        (path,) = files
        images, labels = read_syn_digits_mat(path)
        for index, (image, label) in enumerate(zip(images, labels)):
            key = f"{split}_{index:06d}"
            yield key, {"image": image, "label": int(label), "id": key}
