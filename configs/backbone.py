"""The digits task (configs/digits.py) on a keras.applications trunk: MobileNetV3Small.

The offline digits task (MNIST 0-4 + UCI digits 5-9 -> MNIST photo-blend, 32x32 RGB) with
a `keras_backbone` trunk instead of `small_cnn`: MobileNetV3Small (its own preprocessing,
global average pooling, a 64-unit feature layer), mixed by block
(`step.layer_groups="block"`: 15 mixing groups instead of 88 layers). The weights are
random ("none") so that it runs offline; with network access (or the file in
~/.keras/models) `--config.model.weights=imagenet` starts from ImageNet, and
`--config.model.weights=/path/to/file.weights.h5` from a local file.

    python -m launch.train --config=configs/backbone.py --workdir=runs/backbone
    python -m launch.train --config=configs/backbone.py:smoke --workdir=/tmp/backbone_smoke
    python -m launch.train --config=configs/backbone.py --workdir=runs/resnet \
        --config.model.backbone=ResNet50 --config.model.weights=imagenet
    python -m launch.train --config=configs/backbone.py --workdir=runs/frozen \
        --config.model.freeze_layers=60      # train the last blocks only

Expected cost and results (docs/backbones.md; one run, seed 0, 2 CPU cores shared with
another job): 210 s of training, target test accuracy 0.19 from random weights; target_only
on the same trunk 0.31 (the digits CNN of configs/digits.py: 0.54 +- 0.07 and 0.57). From
random weights a MobileNetV3 does not suit 100 labelled 32x32 images: the config is the
wiring for pretrained backbones (`model.weights=imagenet` or a file), not a tuned result.
`:smoke` (10 steps) checks the wiring in about a minute, most of it tracing the step.
"""

import ml_collections

from configs import digits


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing.")
    config = digits.get_config(arg or None)
    config.model = ml_collections.ConfigDict()
    config.model.trunk = "keras_backbone"
    config.model.backbone = (
        "MobileNetV3Small"  # any keras.applications model, or keras_hub:<preset>
    )
    config.model.weights = "none"  # "none" (offline), "imagenet", or a .weights.h5 / .h5 file
    config.model.image_size = 0  # resize images to this size first; 0: as they are (32x32)
    config.model.freeze_layers = 0  # freeze the first N layers of the backbone
    config.model.dense_units = 64
    config.model.dropout = 0.0
    # Moving statistics of the backbone's batch normalisation: MobileNetV3's own 0.999 stays
    # near its initial values over a short run from random weights; 0: keep the backbone's.
    config.model.batch_norm_momentum = 0.9
    config.step.layer_groups = "block"
    config.optimizer.learning_rate = 1e-3
    if arg == "smoke":
        config.model.dense_units = 16
        config.train.batch_size = 8
        config.train.steps = 10
        config.train.steps_per_epoch = 5
        config.train.checkpoint_every_steps = 5
        config.train.log_every_steps = 5
        config.train.eval_batch_size = 64
        config.data.max_per_class = 10
        config.data.shots_per_class = 3
    return config
