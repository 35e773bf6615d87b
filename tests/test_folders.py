"""Task `folders` (gradmix_tf/tasks/folders.py): a tree of image files -> streams, its errors,
and `launch.train` + `launch.predict` on a generated tree (PNG, JPEG, BMP of mixed sizes)."""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from configs import folders as folders_config
from gradmix_tf import experiment
from gradmix_tf.data.streams import DataError
from gradmix_tf.tasks import load_task
from tests.folder_trees import SOURCE_CLASSES, TARGET_CLASSES, write_image, write_tree
from tests.workdir_testing import output_of, run_launcher

PER_CLASS = 3
UNLABELLED = 4


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> str:
    """A tree of the layout (read only): 2 source streams, 3 target classes, 4 unlabelled."""
    return str(write_tree(tmp_path_factory.mktemp("tree") / "images", PER_CLASS, UNLABELLED))


@pytest.fixture
def copy(tree, tmp_path) -> str:
    """A copy of `tree` to break."""
    return str(shutil.copytree(tree, tmp_path / "images"))


def _load(root, shots_per_class=1, max_per_class=None, image_shape=(32, 32, 3), seed=0):
    return load_task(
        "folders",
        seed=seed,
        shots_per_class=shots_per_class,
        max_per_class=max_per_class,
        root=str(root),
        image_shape=image_shape,
    )


def _arrays(stream):
    parts = list(stream.dataset.batch(1000).as_numpy_iterator())
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def test_streams_classes_and_sizes_come_from_the_folders(tree):
    data = _load(tree, shots_per_class=1)
    assert [s.name for s in data.sources] == sorted(SOURCE_CLASSES)
    assert [s.class_names for s in data.sources] == [
        SOURCE_CLASSES[n] for n in sorted(SOURCE_CLASSES)
    ]
    assert [s.size for s in data.sources] == [2 * PER_CLASS, 2 * PER_CLASS]
    assert data.target_class_names == TARGET_CLASSES
    assert data.target.labelled.size == len(TARGET_CLASSES)
    # The rest of target/train (2 a class) and the 4 images of target/unlabelled.
    assert data.target.unlabelled.size == 2 * len(TARGET_CLASSES) + UNLABELLED
    assert data.target.unlabelled.true_labels is None
    assert data.target.test.size == PER_CLASS * len(TARGET_CLASSES)
    _, labels = _arrays(data.target.test)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # sorted folders, sorted files


def test_images_are_converted_to_the_image_shape(tree):
    for shape in [(32, 32, 3), (20, 24, 1)]:
        data = _load(tree, image_shape=shape)
        images, _ = _arrays(data.sources[0])
        assert images.shape == (2 * PER_CLASS, *shape) and images.dtype == np.float32
        assert 0.0 <= images.min() and images.max() <= 1.0
    # The first image of cars/sedan is a 3-channel PNG of shade 40 +- noise; its mean survives.
    rgb = _arrays(_load(tree).sources[0])[0][0]
    path = os.path.join(tree, "sources", "cars", "sedan", "img_00.png")
    with Image.open(path) as image:
        original = np.asarray(image, np.float32) / 255.0
    assert rgb.mean() == pytest.approx(original.mean(), abs=0.02)
    # A grey PNG (sedan/img_02) is repeated to RGB: its three channels are equal.
    grey = _arrays(_load(tree).sources[0])[0][2]
    np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-6)


def test_the_labelled_images_are_drawn_from_the_seed(tree):
    def labelled(seed):
        return _arrays(_load(tree, shots_per_class=2, seed=seed).target.labelled)[0]

    np.testing.assert_array_equal(labelled(0), labelled(0))
    assert any(not np.array_equal(labelled(0), labelled(s)) for s in (1, 2, 3))


def test_max_per_class_caps_every_part(tree):
    data = _load(tree, shots_per_class=1, max_per_class=2)
    assert [s.size for s in data.sources] == [4, 4]
    assert data.target.test.size == 6
    assert data.target.unlabelled.size == 3 + UNLABELLED  # cap of unlabelled/: 2 x 3 classes


def test_without_an_unlabelled_folder_the_true_labels_are_kept(copy):
    shutil.rmtree(os.path.join(copy, "target", "unlabelled"))
    data = _load(copy, shots_per_class=1)
    assert data.target.unlabelled.size == 2 * len(TARGET_CLASSES)
    assert sorted(data.target.unlabelled.true_labels.tolist()) == [0, 0, 1, 1, 2, 2]


def test_gif_files_are_read(copy):
    path = os.path.join(copy, "sources", "cars", "sedan", "extra.gif")
    Image.fromarray(np.full((10, 14, 3), 200, np.uint8)).save(path)
    images, _ = _arrays(_load(copy).sources[0])
    assert len(images) == 2 * PER_CLASS + 1
    # Sorted paths: extra.gif comes first in its class folder.
    assert images[0].mean() == pytest.approx(200 / 255, abs=0.02)


# Errors: one line naming the problem, before any image is decoded or anything trained -----


def _error(root, **kwargs) -> str:
    start = time.monotonic()
    with pytest.raises(DataError) as error:
        _load(root, **kwargs)
    assert time.monotonic() - start < 10
    message = str(error.value)
    assert "\n" not in message
    return message


def test_an_empty_class_folder_is_named(copy):
    empty = os.path.join(copy, "sources", "planes", "jet")
    shutil.rmtree(empty)
    os.mkdir(empty)
    (open(os.path.join(empty, "notes.txt"), "w")).close()  # not an image
    assert f"class folder {empty} has no images" in _error(copy)


def test_a_target_class_missing_from_the_test_folder_is_named(copy):
    shutil.rmtree(os.path.join(copy, "target", "test", "dog"))
    message = _error(copy)
    assert "class 'dog' of" in message and os.path.join(copy, "target", "train") in message
    assert f"is missing from {os.path.join(copy, 'target', 'test')}" in message


def test_a_test_class_missing_from_the_training_folder_is_named(copy):
    write_image(os.path.join(copy, "target", "test", "owl", "a"), 100, 0)
    message = _error(copy)
    assert f"class 'owl' of {os.path.join(copy, 'target', 'test')}" in message
    assert f"missing from {os.path.join(copy, 'target', 'train')}" in message


@pytest.mark.parametrize("part", ["sources", "target"])
def test_an_unreadable_image_is_named(copy, part):
    folder = "sources/cars/truck" if part == "sources" else "target/test/fox"
    bad = os.path.join(copy, *folder.split("/"), "broken.jpg")
    with open(bad, "wb") as f:
        f.write(np.random.default_rng(0).bytes(300))
    message = _error(copy)
    assert message.startswith(f"{bad}: not a readable image")


@pytest.mark.parametrize(
    "change, expected",
    [
        ("no_root", "{root} does not exist: the root of the tree of images"),
        ("no_sources", "{root}/sources does not exist"),
        ("empty_sources", "{root}/sources has no stream folders"),
        ("files_in_sources", "{root}/sources holds files (stray.png) where stream folders belong"),
        ("stream_without_classes", "{root}/sources/cars has no class folders"),
        ("images_in_a_stream", "{root}/sources/cars holds files (img.png) where class folders"),
        ("no_target", "{root}/target does not exist"),
        ("no_test", "{root}/target/test does not exist: the target's test set"),
        ("misspelt_part", "{root}/target/tests: not part of the layout"),
        ("empty_unlabelled", "{root}/target/unlabelled has no images"),
        ("reserved_stream", "{root}/sources/target: a source stream cannot be called 'target'"),
    ],
)
def test_a_tree_that_does_not_fit_the_layout_says_which_part(copy, change, expected):
    root = str(copy)
    join = os.path.join
    if change == "no_root":
        root = join(root, "nowhere")
    elif change == "no_sources":
        shutil.rmtree(join(root, "sources"))
    elif change == "empty_sources":
        for stream in SOURCE_CLASSES:
            shutil.rmtree(join(root, "sources", stream))
    elif change == "files_in_sources":
        write_image(join(root, "sources", "stray"), 10, 0)
    elif change == "stream_without_classes":
        shutil.rmtree(join(root, "sources", "cars"))
        os.mkdir(join(root, "sources", "cars"))
    elif change == "images_in_a_stream":
        write_image(join(root, "sources", "cars", "img"), 10, 0)
    elif change == "no_target":
        shutil.rmtree(join(root, "target"))
    elif change == "no_test":
        shutil.rmtree(join(root, "target", "test"))
    elif change == "misspelt_part":
        os.rename(join(root, "target", "test"), join(root, "target", "tests"))
    elif change == "empty_unlabelled":
        shutil.rmtree(join(root, "target", "unlabelled"))
        os.mkdir(join(root, "target", "unlabelled"))
    elif change == "reserved_stream":
        os.rename(join(root, "sources", "cars"), join(root, "sources", "target"))
    assert expected.format(root=root) in _error(root)


def test_no_root_and_too_few_images_for_the_shots_are_named(tree):
    with pytest.raises(DataError, match="--config.data.task_options.root=DIR"):
        load_task("folders", seed=0, shots_per_class=1)
    message = _error(tree, shots_per_class=PER_CLASS + 1)
    assert f"{os.path.join(tree, 'target', 'train', 'cat')} has {PER_CLASS} images" in message
    assert "data.shots_per_class" in message


def test_a_bad_image_shape_is_named(tree):
    assert "image_shape must be (height, width, channels)" in _error(tree, image_shape=(32, 32))
    assert "1 (grey) or 3 (RGB) channels" in _error(tree, image_shape=(32, 32, 4))


def test_the_config_passes_its_checks_and_links_the_image_shape(tree):
    config = folders_config.get_config("smoke")
    config.data.task_options.root = tree
    config.data.image_shape = (24, 24, 1)
    resolved = experiment.resolve_config(config)
    assert resolved.data.task_options.image_shape == (24, 24, 1)
    assert experiment.build_data(resolved).image_shape == (24, 24, 1)
    with pytest.raises(ValueError, match="unknown config argument"):
        folders_config.get_config("fast")


# End to end: launch.train on the tree, launch.predict on its export -----------------------


@pytest.mark.slow  # two fresh processes (TensorFlow imports, 30 training steps): ~40 s
def test_train_and_predict_on_a_tree_of_images(tree, tmp_path):
    workdir = str(tmp_path / "run")
    completed = run_launcher(
        "launch.train",
        "--config=configs/folders.py:smoke",
        f"--config.data.task_options.root={tree}",
        f"--workdir={workdir}",
    )
    assert completed.returncode == 0, output_of(completed)
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    assert results["task"] == "folders" and results["steps"] == 30
    assert set(results["mixing_weights"]) == {*SOURCE_CLASSES, "pseudo_labels"}
    with open(os.path.join(workdir, "export", "gradmix_export.json")) as f:
        metadata = json.load(f)
    assert metadata["class_names"] == list(TARGET_CLASSES)
    assert metadata["input_shape"] == [32, 32, 3]

    images = [
        os.path.join(tree, "target", "test", "fox", "img_01.png"),
        os.path.join(tree, "target", "test", "cat", "img_01.jpg"),
        os.path.join(tree, "target", "test", "dog", "img_01.bmp"),
        os.path.join(tree, "target", "unlabelled", "u_02.png"),
    ]
    completed = run_launcher("launch.predict", f"--model={workdir}/export", "--top_k=3", *images)
    assert completed.returncode == 0, output_of(completed)
    lines = completed.stdout.strip().splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == images, output_of(completed)
    for line in lines:
        ranked = [part.rsplit(" (", 1)[0] for part in line.split(": ", 1)[1].split(", ")]
        assert sorted(ranked) == sorted(TARGET_CLASSES), line


@pytest.mark.slow  # a fresh process: ~15 s
def test_train_on_a_broken_tree_is_one_line_before_training(copy, tmp_path):
    shutil.rmtree(os.path.join(copy, "target", "test", "dog"))
    completed = run_launcher(
        "launch.train",
        "--config=configs/folders.py:smoke",
        f"--config.data.task_options.root={copy}",
        f"--workdir={tmp_path / 'run'}",
    )
    assert completed.returncode == 2, output_of(completed)
    (line,) = completed.stderr.strip().splitlines()
    assert line.startswith("error: class 'dog' of") and "is missing from" in line
    assert "Epoch" not in completed.stdout + completed.stderr
    assert not os.path.exists(tmp_path / "run" / "config.json")
