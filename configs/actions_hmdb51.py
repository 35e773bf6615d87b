r"""UCF101 + a Kinetics class subset -> HMDB51 (split 1): the paper's action-recognition transfer.

Sources: UCF101 split 1 train (TFDS `ucf101`, 101 classes, 9,537 clips) and a Kinetics class
subset (gradmix_tf/datasets/kinetics.py, from a local folder of clips); target: HMDB51 split 1
(gradmix_tf/datasets/hmdb51.py, 51 classes): 5 labelled clips a class from its train list
(255), the other 3,315 unlabelled, evaluated on its test list (1,530 clips). Each video is one
centre window of 16 frames at about 10 fps, 112x112; the (2+1)D trunk sees random 12-frame
windows of it while training.

Prepare the data first (docs/video.md gives the layouts):

    # UCF101: TFDS's own builder downloads it (6.5 GB) on a machine with network:
    python -c "import tensorflow_datasets as tfds; tfds.builder('ucf101/ucf101_1_256').download_and_prepare()"
    # HMDB51 and Kinetics: manual files, prepared on first use from
    #   <manual_dir>/hmdb51/{videos,testTrainMulti_7030_splits}/   <manual_dir>/kinetics/{train,annotations}/
    python -m launch.train --config=configs/actions_hmdb51.py --workdir=runs/hmdb51 \
        --config.data.task_options.manual_dir=$HOME/action_manual

Expected cost (not run here: no data on the development machines): preparing HMDB51 at
10 fps / 128 px decodes 6,766 clips (tens of minutes on a CPU); the default model is the
compact (2+1)D trunk from scratch, a GPU run of a few hours. Memory: every stream is cached
as float32 clips (16x112x112x3 = 2.4 MB a clip): UCF101 alone is ~23 GB, so cap it with
`--config.data.max_per_class=40` (~10 GB for all streams) on a smaller machine.
A pretrained frame encoder (`model.trunk=frame_encoder`, e.g. `backbone=ResNet50` with
`weights=imagenet` where the weights are available) is the stronger choice, as in the paper.
"""

import ml_collections

KINETICS_SUBSET = (
    "archery", "bowling", "cartwheeling", "climbing a rope", "dribbling basketball",
    "golf driving", "kicking soccer ball", "pull ups", "push up", "riding a bike",
    "riding or walking with horse", "shaking hands", "situp", "sword fighting", "waving hand",
)  # fmt: skip
"""A default Kinetics-400 subset: actions close to HMDB51's (any class names of the CSV work)."""


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    from configs import actions

    config = actions.get_config()
    config.data.task = "actions_hmdb51"
    config.data.shots_per_class = 5  # labelled HMDB51 clips a class; 0 = all (oracle)
    config.data.max_per_class = 0  # cap on source clips a class; 0 = no cap
    config.data.task_options = ml_collections.ConfigDict(
        {
            "kinetics_classes": KINETICS_SUBSET,
            "kinetics_name": "hmdb_like15",
            "use_ucf101": True,
            "ucf101_config": "ucf101_1_256",
            "ucf101_stride": 3,  # 25 fps -> about 8 fps
            "hmdb51_split": 1,
            "fps": 10.0,
            "frame_size": 128,
            "num_frames": 16,
            "size": 112,
            "data_dir": ml_collections.FieldReference(None, field_type=str),
            "manual_dir": ml_collections.FieldReference(None, field_type=str),
        }
    )
    config.model.filters = (32, 64, 128, 256)
    config.model.clip_length = 12
    config.model.stem_stride = 2
    config.model.flatten = False
    config.model.dense_units = 256
    config.model.dropout = 0.3
    config.pseudo_labels.warmup_epochs = 10
    config.pseudo_labels.refresh_every = 5
    config.train.batch_size = 16
    config.train.steps = 20000
    config.train.steps_per_epoch = 500
    config.train.checkpoint_every_steps = 1000
    config.train.log_every_steps = 100
    config.train.eval_batch_size = 32
    if arg:
        raise ValueError(f"unknown config argument {arg!r}; this config has no variants.")
    return config
