"""Task `folders`: your own images, in folders laid out as `keras.utils.image_dataset_from_directory` reads them.

    DIR/sources/<stream>/<class>/<images>   one source stream a folder, its classes its subfolders
    DIR/target/train/<class>/<images>       the target's training pool
    DIR/target/unlabelled/<images>          optional: target images without labels
    DIR/target/test/<class>/<images>        the target's test set

Each source stream gets its own head; its label space is its class folders,
sorted by name (label `i` is the `i`-th name), as Keras does. The target's
classes are the class folders of `target/train`, and `target/test` must have
the same ones. From each class of `target/train`, `seed` draws
`shots_per_class` labelled images; the others, and every image of
`target/unlabelled`, make the unlabelled set (pseudo-labels). The class
names are the folder names: the export records them and `launch.predict`
prints them.

Images: the files with the extensions of `IMAGE_EXTENSIONS` (PNG, JPEG,
BMP, GIF: what `tf.io.decode_image` reads; the first frame of a GIF), in a
class folder or below it, in sorted path order; other files (and hidden
ones) are left out, as Keras does. Each is decoded at its bit depth to [0, 1],
converted to `image_shape`'s channels (alpha dropped, grey repeated to RGB,
RGB to grey by `tf.image.rgb_to_grayscale`) and resized bilinearly (with
antialiasing) to its height and width. `max_per_class` keeps the first images
of each class in every part, and at most `max_per_class` x (target classes)
images of `target/unlabelled`.

The whole tree is listed and checked before any image is decoded, and every
image is decoded before training, so a tree that does not match the layout,
an empty class folder, classes of `target/train` and `target/test` that
differ, or an unreadable image stop the run at once, with a `DataError` that
names the folder or file.

Streams hold their images in memory as float32 (a 32x32x3 image is 12 KB).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from gradmix_tf.data.streams import (
    DataError,
    LabelledStream,
    MultiStreamData,
    TargetSplit,
    UnlabelledStream,
    k_shot_indices,
)

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
"""The image files of a folder (any case), as `keras.utils.image_dataset_from_directory`'s."""

TARGET_STREAM = "target"
# Stream names the model gives its own streams (the target's, and GradMixModel's
# pseudo-labelled stream): a source folder may not take them.
RESERVED_STREAM_NAMES = (TARGET_STREAM, "pseudo_labels")
LAYOUT = (
    "DIR/sources/<stream>/<class>/<images>, DIR/target/train/<class>/<images>, "
    "DIR/target/test/<class>/<images> and optionally DIR/target/unlabelled/<images>"
)
_TARGET_PARTS = ("train", "test", "unlabelled")


@dataclasses.dataclass(frozen=True)
class ClassFolders:
    """The image files of a folder of class folders, listed but not decoded.

    Attributes:
        folder: the folder (e.g. `DIR/target/train`).
        class_names: its class folders, sorted.
        files: one list of image paths a class, each sorted.
    """

    folder: str
    class_names: tuple[str, ...]
    files: tuple[tuple[str, ...], ...]

    def capped(self, max_per_class: int | None) -> ClassFolders:
        """The first `max_per_class` files of each class (all when None)."""
        if max_per_class is None:
            return self
        return dataclasses.replace(self, files=tuple(f[:max_per_class] for f in self.files))

    def paths_and_labels(self) -> tuple[list[str], np.ndarray]:
        paths = [path for files in self.files for path in files]
        labels = np.repeat(np.arange(len(self.files)), [len(f) for f in self.files])
        return paths, labels.astype(np.int64)


def _visible_entries(folder: str) -> list[str]:
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def _subfolders(folder: str, kind: str, what: str) -> list[str]:
    """The visible entries of `folder`, all folders; files among them are a `DataError`."""
    entries = _visible_entries(folder)
    stray = [name for name in entries if not os.path.isdir(os.path.join(folder, name))]
    if stray:
        raise DataError(
            f"{folder} holds files ({', '.join(stray[:3])}{', ...' if len(stray) > 3 else ''}) "
            f"where {kind} folders belong: {what} (the layout: {LAYOUT})."
        )
    return entries


def _require_folder(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise DataError(f"{path} does not exist: {what} (the layout: {LAYOUT}).")
    if not os.path.isdir(path):
        raise DataError(f"{path} is a file, not a folder: {what} (the layout: {LAYOUT}).")


def image_files(folder: str) -> list[str]:
    """The image files under `folder` (`IMAGE_EXTENSIONS`, not hidden), in sorted path order."""
    found = []
    for parent, subfolders, names in os.walk(folder):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found += [
            os.path.join(parent, name)
            for name in names
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return sorted(found)


def list_class_folders(folder: str, what: str) -> ClassFolders:
    """Lists a folder of class folders; a `DataError` names what does not fit the layout.

    Args:
        folder: holds one folder a class, each holding images.
        what: how the error calls `folder` (e.g. "a source stream").
    """
    _require_folder(folder, what)
    entries = _subfolders(folder, "class", f"{what} holds one folder a class, each holding images")
    if not entries:
        raise DataError(
            f"{folder} has no class folders: {what} holds one folder a class, each holding "
            f"images (the layout: {LAYOUT})."
        )
    files = []
    for name in entries:
        found = image_files(os.path.join(folder, name))
        if not found:
            raise DataError(
                f"class folder {os.path.join(folder, name)} has no images "
                f"({', '.join(IMAGE_EXTENSIONS)} files): add some or remove the folder."
            )
        files.append(tuple(found))
    return ClassFolders(folder, tuple(entries), tuple(files))


def _check_same_classes(train: ClassFolders, test: ClassFolders) -> None:
    for have, lack in ((train, test), (test, train)):
        missing = [name for name in have.class_names if name not in lack.class_names]
        if missing:
            names = ", ".join(repr(name) for name in missing)
            raise DataError(
                f"class {names} of {have.folder} {'is' if len(missing) == 1 else 'are'} missing "
                f"from {lack.folder}: the target's training and test folders need the same "
                "class folders."
            )


def _check_shots(train: ClassFolders, shots_per_class: int | None) -> None:
    for name, files in zip(train.class_names, train.files):
        if shots_per_class is not None and len(files) < shots_per_class:
            raise DataError(
                f"class folder {os.path.join(train.folder, name)} has {len(files)} images, fewer "
                f"than shots_per_class={shots_per_class}: add images or lower "
                "data.shots_per_class."
            )


def decode_image_file(path: str, image_shape: Sequence[int]) -> np.ndarray:
    """One image file as float32 `image_shape` = (H, W, C) in [0, 1].

    Raises:
        DataError: the file cannot be read or is not an image TensorFlow decodes.
    """
    height, width, channels = (int(d) for d in image_shape)
    try:
        encoded = tf.io.read_file(path)
        image = tf.io.decode_image(encoded, dtype=tf.float32, expand_animations=False)
    except (tf.errors.OpError, ValueError) as error:
        reason = (str(getattr(error, "message", error)).strip().splitlines() or ["?"])[0]
        raise DataError(
            f"{path}: not a readable image ({reason}); replace the file or remove it."
        ) from None
    if image.shape[-1] in (2, 4):  # grey or RGB with alpha: the alpha is dropped
        image = image[..., :-1]
    if image.shape[-1] == 1 and channels == 3:
        image = tf.image.grayscale_to_rgb(image)
    elif image.shape[-1] == 3 and channels == 1:
        image = tf.image.rgb_to_grayscale(image)
    if tuple(image.shape[:2]) != (height, width):
        image = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
    return np.clip(image.numpy(), 0.0, 1.0).astype(np.float32)


def decode_images(paths: Sequence[str], image_shape: Sequence[int]) -> np.ndarray:
    """Image files as float32 `[N, *image_shape]` in [0, 1] (`decode_image_file`)."""
    if not paths:
        return np.zeros((0, *image_shape), np.float32)
    return np.stack([decode_image_file(path, image_shape) for path in paths])


def _check_image_shape(image_shape) -> tuple[int, int, int]:
    shape = tuple(image_shape) if image_shape is not None else ()
    if len(shape) != 3 or not all(isinstance(d, int | np.integer) and d > 0 for d in shape):
        raise DataError(
            f"image_shape must be (height, width, channels), e.g. (32, 32, 3); got {image_shape!r}."
        )
    if shape[2] not in (1, 3):
        raise DataError(f"image_shape must have 1 (grey) or 3 (RGB) channels, got {shape[2]}.")
    return tuple(int(d) for d in shape)


@dataclasses.dataclass(frozen=True)
class FolderTree:
    """The listed (not decoded) image files of a tree of the layout."""

    sources: dict[str, ClassFolders]
    train: ClassFolders
    test: ClassFolders
    unlabelled: tuple[str, ...]


def list_tree(root: str) -> FolderTree:
    """Lists and checks a tree of the layout (module docstring) without decoding an image.

    Raises:
        DataError: naming the part of the tree that is missing or does not fit.
    """
    if not root:
        raise DataError(
            "task 'folders' needs the tree of images: --config.data.task_options.root=DIR "
            f"(the layout: {LAYOUT})."
        )
    root = os.path.expanduser(os.fspath(root))
    _require_folder(root, "the root of the tree of images")
    sources_dir = os.path.join(root, "sources")
    _require_folder(sources_dir, "it holds one folder a source stream")
    streams = _subfolders(
        sources_dir,
        "stream",
        "it holds one folder a source stream, each holding one folder a class",
    )
    if not streams:
        raise DataError(
            f"{sources_dir} has no stream folders: it holds one folder a source stream, each "
            f"holding one folder a class (the layout: {LAYOUT})."
        )
    reserved = [name for name in streams if name in RESERVED_STREAM_NAMES]
    if reserved:
        raise DataError(
            f"{os.path.join(sources_dir, reserved[0])}: a source stream cannot be called "
            f"{reserved[0]!r} (the name of another stream of the model): rename the folder."
        )
    sources = {
        name: list_class_folders(os.path.join(sources_dir, name), f"source stream {name!r}")
        for name in streams
    }
    target_dir = os.path.join(root, "target")
    _require_folder(target_dir, "it holds train/, test/ and optionally unlabelled/")
    unknown = [name for name in _visible_entries(target_dir) if name not in _TARGET_PARTS]
    if unknown:
        raise DataError(
            f"{os.path.join(target_dir, unknown[0])}: not part of the layout; {target_dir} holds "
            "train/, test/ and optionally unlabelled/."
        )
    train = list_class_folders(os.path.join(target_dir, "train"), "the target's training pool")
    test = list_class_folders(os.path.join(target_dir, "test"), "the target's test set")
    _check_same_classes(train, test)
    unlabelled_dir = os.path.join(target_dir, "unlabelled")
    unlabelled = ()
    if os.path.exists(unlabelled_dir):
        _require_folder(unlabelled_dir, "it holds the target's unlabelled images")
        unlabelled = tuple(image_files(unlabelled_dir))
        if not unlabelled:
            raise DataError(
                f"{unlabelled_dir} has no images ({', '.join(IMAGE_EXTENSIONS)} files): add "
                "some, or remove the folder (it is optional)."
            )
    return FolderTree(sources, train, test, unlabelled)


def folders_task(
    seed: int = 0,
    shots_per_class: int | None = 10,
    *,
    max_per_class: int | None = None,
    root: str | None = None,
    image_shape: Sequence[int] = (32, 32, 3),
) -> MultiStreamData:
    """The streams of a tree of image folders (see the module docstring).

    Args:
        seed: draws the labelled images of each class of `target/train`.
        shots_per_class: labelled target images a class; the rest of
            `target/train` is unlabelled. None labels all of `target/train`
            (then `target/unlabelled` is not used).
        max_per_class: keep the first this many images of each class in
            every part (and `max_per_class` x classes of `target/unlabelled`).
        root: the tree's root folder, DIR.
        image_shape: (H, W, C) every image is converted to, C 1 or 3.

    Raises:
        DataError: the tree does not fit the layout, or an image cannot be read.
    """
    image_shape = _check_image_shape(image_shape)
    tree = list_tree(root)
    train, test = tree.train.capped(max_per_class), tree.test.capped(max_per_class)
    _check_shots(train, shots_per_class)
    extra = tree.unlabelled
    if max_per_class is not None:
        extra = extra[: max_per_class * len(train.class_names)]

    sources = []
    for name, folders in tree.sources.items():
        paths, labels = folders.capped(max_per_class).paths_and_labels()
        images = decode_images(paths, image_shape)
        sources.append(LabelledStream.from_arrays(name, images, labels, folders.class_names))
    train_paths, train_labels = train.paths_and_labels()
    train_images = decode_images(train_paths, image_shape)
    test_paths, test_labels = test.paths_and_labels()
    test_images = decode_images(test_paths, image_shape)
    extra_images = decode_images(extra, image_shape)
    target = _target_split(
        train_images, train_labels, test_images, test_labels, extra_images, train.class_names,
        shots_per_class, seed,
    )  # fmt: skip
    return MultiStreamData(sources, target)


def _target_split(
    train_images, train_labels, test_images, test_labels, extra_images, class_names, shots, seed
) -> TargetSplit:
    """`TargetSplit.from_arrays`, with `extra_images` (no labels) added to the unlabelled set."""
    if shots is None or not len(extra_images):
        return TargetSplit.from_arrays(
            train_images, train_labels, test_images, test_labels, class_names, shots, seed,
            name=TARGET_STREAM,
        )  # fmt: skip
    labelled, rest = k_shot_indices(train_labels, shots, seed)
    unlabelled = UnlabelledStream.from_arrays(
        f"{TARGET_STREAM}_unlabelled", np.concatenate([train_images[rest], extra_images])
    )  # no true labels: pseudo-label precision is not known
    return TargetSplit(
        LabelledStream.from_arrays(
            TARGET_STREAM, train_images[labelled], train_labels[labelled], class_names
        ),
        unlabelled,
        LabelledStream.from_arrays(f"{TARGET_STREAM}_test", test_images, test_labels, class_names),
    )
