"""MNIST-M (Ganin & Lempitsky, 2015): MNIST digits blended with BSDS500 photo patches."""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from gradmix_tf.datasets.manual_builder import (
    GANIN_2015_CITATION,
    ManualBuilder,
    ManualFilesError,
    digit_image_features,
)


def read_labels_file(path: str) -> list[tuple[str, int]]:
    """Reads `mnist_m_<split>_labels.txt`: one `<file name> <digit>` a line."""
    entries = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].isdigit() or int(fields[1]) > 9:
                raise ValueError(
                    f"{path}, line {number}: expected '<file name> <digit 0-9>', got {line!r}."
                )
            entries.append((fields[0], int(fields[1])))
    return entries


class MnistM(ManualBuilder):
    """MNIST-M: 32x32 colour digits, train 59,001 / test 9,001 in the full release."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: the PNG folders of the MNIST-M release."}
    MANUAL_FILES = {
        "train": [("mnist_m_train", "mnist_m_train_labels.txt")],
        "test": [("mnist_m_test", "mnist_m_test_labels.txt")],
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Extract the MNIST-M release (mnist_m.tar.gz, from the DANN project page of
    Ganin & Lempitsky) so that manual_dir holds
      mnist_m_train/00000000.png ...  and  mnist_m_train_labels.txt
      mnist_m_test/00000000.png ...   and  mnist_m_test_labels.txt
    Each labels file has one '<file name> <digit>' a line. A split whose folder
    or labels file is missing is left out (e.g. only the test files give only
    the test split). From arrays: gradmix_tf.datasets.manual_files.write_mnist_m.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=(
                "MNIST-M: MNIST digits blended with random patches of BSDS500 colour photos "
                "(|patch - digit|), 32x32 RGB, digits 0-9. The id is the PNG file name."
            ),
            features=digit_image_features(),
            supervised_keys=("image", "label"),
            homepage="http://yaroslav.ganin.net/",
            citation=GANIN_2015_CITATION,
        )

    def _generate_examples(self, split, files):
        from PIL import Image

        folder, labels_file = files
        for name, label in read_labels_file(labels_file):
            path = os.path.join(folder, name)
            if not os.path.exists(path):
                raise ManualFilesError(
                    f"{labels_file} lists {name}, but {path} does not exist: extract the "
                    f"whole {os.path.basename(folder)}/ folder."
                )
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            yield name, {"image": pixels, "label": label, "id": name}
