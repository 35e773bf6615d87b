"""Trees of image files in the layout of the `folders` task, written for the tests."""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

SOURCE_CLASSES = {"cars": ("sedan", "truck"), "planes": ("glider", "jet")}
TARGET_CLASSES = ("cat", "dog", "fox")
FORMATS = (("png", "RGB"), ("jpg", "RGB"), ("png", "L"), ("jpg", "L"), ("bmp", "RGB"))
"""Extension and PIL mode of the i-th image of a class, in turn."""


def write_image(path, colour: int, index: int) -> pathlib.Path:
    """A picture of mixed size and format, `path` + the extension of the `index`-th format
    (`FORMATS`): noise around a class's shade `colour`."""
    extension, mode = FORMATS[index % len(FORMATS)]
    rng = np.random.default_rng(colour * 100 + index)
    height, width = int(rng.integers(12, 60)), int(rng.integers(12, 60))
    channels = 3 if mode == "RGB" else 1
    pixels = np.clip(colour + rng.normal(0, 20, (height, width, channels)), 0, 255)
    pixels = pixels.astype(np.uint8)
    image = Image.fromarray(pixels if channels == 3 else pixels[..., 0], mode=mode)
    path = pathlib.Path(path).with_suffix(f".{extension}")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write_class_folders(folder: pathlib.Path, classes, per_class: int) -> None:
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(folder / name / f"img_{i:02d}", 40 + 80 * c, c * per_class + i)


def write_tree(root: pathlib.Path, per_class: int = 3, unlabelled: int = 4) -> pathlib.Path:
    """DIR/sources/{cars,planes}/<class>/, DIR/target/{train,test}/{cat,dog,fox}/ and
    `unlabelled` images in DIR/target/unlabelled (none: no such folder); returns `root`."""
    for stream, classes in SOURCE_CLASSES.items():
        write_class_folders(root / "sources" / stream, classes, per_class)
    write_class_folders(root / "target" / "train", TARGET_CLASSES, per_class)
    write_class_folders(root / "target" / "test", TARGET_CLASSES, per_class)
    for i in range(unlabelled):
        write_image(root / "target" / "unlabelled" / f"u_{i:02d}", 40 + 80 * (i % 3), i)
    return root
