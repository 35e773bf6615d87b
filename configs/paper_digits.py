r"""The paper's digits setting: MNIST 0-4 + SVHN 5-9 -> MNIST-M 0-9, by TFDS names (task `tfds`).

Sources: MNIST digits 0-4 (TFDS `mnist`, train split, 28x28 zero padded to 32x32 and repeated
to RGB) and SVHN digits 5-9 (TFDS `svhn_cropped`, train split, relabelled 0..4, classes
"5".."9"), each with its own head. Target: MNIST-M (this package's `mnist_m` builder, files
placed by hand), all ten digits: 10 labelled images a class of its train split drawn from the
seed, the rest of that split unlabelled, its test split the test set. Every other field
(model, GradMix, pseudo-labels, optimizer, budget) is that of `configs/digits.py`.

`mnist` and `svhn_cropped` are downloaded by TFDS into the data dir on the first run (with
network; without, the run stops within seconds saying how to prepare them elsewhere). MNIST-M
is built from its release files in the manual dir (docs/datasets.md, "Files to place"):

    GRADMIX_MANUAL_DIR=~/manual GRADMIX_DATA_DIR=~/tensorflow_datasets \
        python -m launch.train --config=configs/paper_digits.py --workdir=runs/paper_digits

or `--config.data.task_options.manual_dir=... --config.data.task_options.data_dir=...`.
Cost: the streams are held in memory as float32 32x32x3 (MNIST 0-4 30,596 + SVHN 5-9
about 26,000 + MNIST-M 68,002 images: about 1.5 GB); the 600 steps take about as long as
`configs/digits.py`. Accuracies are not measured yet. `:smoke` caps every class at 20
images and runs 30 steps, to check the wiring.
"""

import os

import ml_collections

from configs import digits


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing.")
    config = digits.get_config(arg or None)
    config.data.task = "tfds"
    # Options of gradmix_tf.tasks.tfds.tfds_task: each source is a labelled_stream, the target a
    # target_split of gradmix_tf.datasets.loading.
    config.data.task_options = ml_collections.ConfigDict()
    options = config.data.task_options
    options.image_shape = (32, 32, 3)
    options.sources = (
        {
            "dataset": "mnist",
            "classes": (0, 1, 2, 3, 4),
            "name": "mnist_0_4",
            "resize_method": "pad",
        },
        {"dataset": "svhn_cropped", "classes": (5, 6, 7, 8, 9), "name": "svhn_5_9"},
    )
    options.target = {
        "dataset": "mnist_m",
        "train_split": "train",
        "test_split": "test",
        "name": "mnist_m",
    }
    options.download = True  # mnist and svhn_cropped, when not prepared in data_dir
    options.data_dir = ml_collections.FieldReference(
        os.environ.get("GRADMIX_DATA_DIR"), field_type=str
    )
    # A folder holding mnist_m/ (used only until mnist_m is prepared in data_dir).
    options.manual_dir = ml_collections.FieldReference(
        os.environ.get("GRADMIX_MANUAL_DIR"), field_type=str
    )
    return config
