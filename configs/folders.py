r"""Your own images in folders: the `folders` task with the protocol of `configs/digits.py`.

The tree (the layout of `keras.utils.image_dataset_from_directory`, one level up):

    DIR/sources/<stream>/<class>/<images>   one source stream a folder, its own head
    DIR/target/train/<class>/<images>       10 labelled a class (drawn from the seed), the rest unlabelled
    DIR/target/unlabelled/<images>          optional: more unlabelled target images
    DIR/target/test/<class>/<images>        the same class folders as target/train

Images of any size in PNG, JPEG, BMP or GIF, converted to `data.image_shape` (grey or RGB,
resized). Class names are the folder names; the export records them and `launch.predict`
prints them (`gradmix_tf/tasks/folders.py`, README.md "Your data").

    python -m launch.train --config=configs/folders.py \
        --config.data.task_options.root=DIR --workdir=runs/mine
    python -m launch.train --config=configs/folders.py --config.data.task_options.root=DIR \
        --config.data.image_shape=64,64,3 --config.data.shots_per_class=5 --workdir=runs/mine64
    python -m launch.predict --model=runs/mine/export photo.jpg

Expected cost: that of `configs/digits.py` (600 steps of batches of 32 a stream, about 2
minutes on 2 CPU cores at 32x32x3) plus decoding the images once; the accuracy depends on
your data. `:smoke` is a wiring check on any tree that fits the layout (30 steps, 1 labelled
image a class, at most 20 images a class in every part): well under a minute.
"""

import ml_collections

from configs import digits


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing.")
    config = digits.get_config(arg or None)
    config.data.task = "folders"
    # Every image is converted to this (height, width, channels), channels 1 or 3.
    config.data.image_shape = (32, 32, 3)
    # Options of gradmix_tf.tasks.folders.folders_task.
    config.data.task_options = ml_collections.ConfigDict()
    config.data.task_options.root = ml_collections.FieldReference(None, field_type=str)
    # The same field as data.image_shape (setting either sets both).
    config.data.task_options.image_shape = config.data.get_ref("image_shape")
    config.data.drop_sources = ()
    if arg == "smoke":
        config.data.shots_per_class = 1  # any tree has an image a class
    return config
