"""Tests of the multi-stream data contract (`gradmix_tf.data.streams`)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf.data.streams import (
    DataError,
    LabelledStream,
    MultiStreamData,
    TargetSplit,
    UnlabelledStream,
    k_shot_indices,
)

IMAGE_SHAPE = (4, 4, 1)
TARGET_CLASSES = ("a", "b", "c")
SOURCE_CLASSES = ("x", "y")


def numbered_images(count: int, shape=IMAGE_SHAPE, first: int = 0) -> np.ndarray:
    """uint8 images whose every pixel is the image's number: image i is filled with i."""
    numbers = np.arange(first, first + count, dtype=np.uint8)
    return np.broadcast_to(numbers.reshape(-1, *[1] * len(shape)), (count, *shape)).copy()


def image_numbers(images) -> np.ndarray:
    """Recovers the numbers of `numbered_images` after scaling to [0, 1]."""
    return np.rint(np.asarray(images)[:, 0, 0, 0] * 255.0).astype(np.int64)


def read(stream) -> tuple[np.ndarray, np.ndarray]:
    """A whole stream as numpy (images, labels or ids), in its order."""
    images, second = zip(*stream.dataset.as_numpy_iterator())
    return np.stack(images), np.stack(second)


def target_split(pool_per_class=6, test_per_class=2, shots=2, seed=0, shape=IMAGE_SHAPE):
    """A 3-class target: numbered pool images 0.., test images numbered from 100."""
    pool_labels = np.repeat(np.arange(3), pool_per_class)
    test_labels = np.repeat(np.arange(3), test_per_class)
    return TargetSplit.from_arrays(
        numbered_images(len(pool_labels), shape),
        pool_labels,
        numbered_images(len(test_labels), shape, first=100),
        test_labels,
        TARGET_CLASSES,
        shots_per_class=shots,
        seed=seed,
    )


# ------------------------------------------------------------ labelled stream
def test_from_arrays_scales_uint8_and_adds_a_grey_channel():
    images = np.array([np.zeros((4, 4)), np.full((4, 4), 255)], dtype=np.uint8)  # [2, 4, 4]
    stream = LabelledStream.from_arrays("grey", images, [0, 1], SOURCE_CLASSES)
    assert stream.image_shape == (4, 4, 1)
    assert stream.size == 2
    assert stream.num_classes == 2
    assert stream.dataset.element_spec[0].dtype == tf.float32
    assert stream.dataset.element_spec[1].dtype == tf.int32
    x, y = read(stream)
    np.testing.assert_array_equal(x[0], np.zeros((4, 4, 1)))
    np.testing.assert_array_equal(x[1], np.ones((4, 4, 1)))
    np.testing.assert_array_equal(y, [0, 1])


def test_from_arrays_keeps_float_images():
    images = np.full((1, 2, 2, 3), 0.25, np.float64)
    x, _ = read(LabelledStream.from_arrays("colour", images, [1], SOURCE_CLASSES))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, np.full((1, 2, 2, 3), 0.25), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "labels, bad_ids",
    [
        pytest.param([0, 1, 2, 7], "[2, 7]", id="too_large"),
        pytest.param([0, -1, 1], "[-1]", id="negative"),
    ],
)
def test_labels_outside_the_head_range_name_stream_and_ids(labels, bad_ids):
    with pytest.raises(DataError) as raised:
        LabelledStream.from_arrays(
            "my_source", numbered_images(len(labels)), labels, SOURCE_CLASSES
        )
    message = str(raised.value)
    assert "'my_source'" in message
    assert bad_ids in message
    assert "[0, 1]" in message  # the head's range


def test_non_integer_labels_raise():
    with pytest.raises(DataError, match="'my_source'.*integer"):
        LabelledStream.from_arrays("my_source", numbered_images(2), [0.5, 1.0], SOURCE_CLASSES)


def test_mismatched_lengths_raise():
    with pytest.raises(DataError, match="'my_source': 3 images but 2 labels"):
        LabelledStream.from_arrays("my_source", numbered_images(3), [0, 1], SOURCE_CLASSES)


def test_empty_stream_raises():
    with pytest.raises(DataError, match="'my_source' is empty"):
        LabelledStream.from_arrays("my_source", np.zeros((0, 4, 4), np.uint8), [], SOURCE_CLASSES)
    with pytest.raises(DataError, match="'unlabelled' is empty"):
        UnlabelledStream.from_arrays("unlabelled", np.zeros((0, 4, 4), np.uint8))


def test_images_of_wrong_rank_raise():
    with pytest.raises(DataError, match=r"'my_source'.*\[N, H, W\]"):
        LabelledStream.from_arrays("my_source", np.zeros((2, 4)), [0, 1], SOURCE_CLASSES)


def test_from_dataset_checks_labels_when_iterated():
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.zeros((3, 4, 4, 1), np.float32), np.array([0, 1, 5], np.int32))
    )
    stream = LabelledStream.from_dataset("my_dataset", dataset, SOURCE_CLASSES)
    assert stream.size == 3
    iterator = iter(stream.dataset)
    assert int(next(iterator)[1]) == 0
    assert int(next(iterator)[1]) == 1
    # The message's quotes come back escaped from the runtime: match the name alone.
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"my_dataset.*outside its head.*range \[0, 1\]"
    ):
        next(iterator)


def test_from_dataset_rejects_batched_or_unpaired_datasets():
    batched = tf.data.Dataset.from_tensor_slices(
        (np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, np.int32))
    ).batch(2)
    with pytest.raises(DataError, match="'my_dataset'.*unbatched"):
        LabelledStream.from_dataset("my_dataset", batched, SOURCE_CLASSES)
    images_only = tf.data.Dataset.from_tensor_slices(np.zeros((2, 4, 4, 1), np.float32))
    with pytest.raises(DataError, match=r"'my_dataset'.*\(image, label\)"):
        LabelledStream.from_dataset("my_dataset", images_only, SOURCE_CLASSES)


# --------------------------------------------------------------------- k shot
KSHOT_LABELS = np.repeat(np.arange(3), [5, 6, 7])  # 18 examples, classes of 5, 6 and 7


def test_exact_counts_per_class_and_a_partition():
    labelled, rest = k_shot_indices(KSHOT_LABELS, shots_per_class=2, seed=0)
    np.testing.assert_array_equal(np.bincount(KSHOT_LABELS[labelled]), [2, 2, 2])
    np.testing.assert_array_equal(np.bincount(KSHOT_LABELS[rest]), [3, 4, 5])
    assert len(np.intersect1d(labelled, rest)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([labelled, rest])), np.arange(18))
    np.testing.assert_array_equal(labelled, np.sort(labelled))
    np.testing.assert_array_equal(rest, np.sort(rest))


def test_same_seed_same_draw_other_seed_other_draw():
    first, _ = k_shot_indices(KSHOT_LABELS, 2, seed=3)
    again, _ = k_shot_indices(KSHOT_LABELS, 2, seed=3)
    np.testing.assert_array_equal(first, again)
    other, _ = k_shot_indices(KSHOT_LABELS, 2, seed=4)
    assert not np.array_equal(first, other)


def test_fewer_examples_than_shots_raises():
    with pytest.raises(DataError, match="class 0 has 5 .*fewer than shots_per_class=6"):
        k_shot_indices(KSHOT_LABELS, shots_per_class=6, seed=0)


# --------------------------------------------------------------- target split
def test_sizes_ids_and_true_labels():
    split = target_split(pool_per_class=6, test_per_class=2, shots=2)
    assert split.labelled.size == 6
    assert split.unlabelled.size == 12
    assert split.test.size == 6
    assert split.labelled.name == "target"
    assert split.unlabelled.name == "target_unlabelled"
    assert split.test.name == "target_test"
    pool_labels = np.repeat(np.arange(3), 6)
    labelled_images, labelled_labels = read(split.labelled)
    unlabelled_images, ids = read(split.unlabelled)
    np.testing.assert_array_equal(ids, np.arange(12))
    # Pool image i has label pool_labels[i]: labels and true labels follow the images.
    np.testing.assert_array_equal(labelled_labels, pool_labels[image_numbers(labelled_images)])
    np.testing.assert_array_equal(
        split.unlabelled.true_labels, pool_labels[image_numbers(unlabelled_images)]
    )
    np.testing.assert_array_equal(np.bincount(labelled_labels), [2, 2, 2])
    # Labelled and unlabelled images partition the pool.
    np.testing.assert_array_equal(
        np.sort(np.concatenate([image_numbers(labelled_images), image_numbers(unlabelled_images)])),
        np.arange(18),
    )
    test_images, test_labels = read(split.test)
    np.testing.assert_array_equal(image_numbers(test_images), np.arange(100, 106))
    np.testing.assert_array_equal(test_labels, [0, 0, 1, 1, 2, 2])


def test_the_seed_redraws_the_labelled_split():
    first = image_numbers(read(target_split(seed=1).labelled)[0])
    again = image_numbers(read(target_split(seed=1).labelled)[0])
    np.testing.assert_array_equal(first, again)
    others = [image_numbers(read(target_split(seed=s).labelled)[0]) for s in (2, 3, 4)]
    assert any(not np.array_equal(first, other) for other in others)


def test_no_shots_labels_the_whole_pool():
    split = target_split(pool_per_class=6, shots=None)
    assert split.labelled.size == 18
    assert split.unlabelled is None
    np.testing.assert_array_equal(image_numbers(read(split.labelled)[0]), np.arange(18))


def test_too_many_shots_raise():
    with pytest.raises(DataError, match="fewer than shots_per_class=7"):
        target_split(pool_per_class=6, shots=7)


# ---------------------------------------------------------- multi stream data
def labelled_source(name="source_1", count=4, shape=IMAGE_SHAPE, first=0):
    labels = np.arange(count) % len(SOURCE_CLASSES)
    return LabelledStream.from_arrays(
        name, numbered_images(count, shape, first), labels, SOURCE_CLASSES
    )


def test_mismatched_image_shapes_name_the_stream_and_both_shapes():
    with pytest.raises(DataError) as raised:
        MultiStreamData([labelled_source("wide", shape=(4, 6, 1))], target_split())
    message = str(raised.value)
    assert "'wide'" in message
    assert "(4, 6, 1)" in message
    assert "(4, 4, 1)" in message


def test_mismatched_channels_of_the_test_set_raise():
    split = target_split()
    split.test = LabelledStream.from_arrays(
        "target_test", numbered_images(3, (4, 4, 3)), [0, 1, 2], TARGET_CLASSES
    )
    with pytest.raises(DataError, match=r"'target_test'.*\(4, 4, 3\).*\(4, 4, 1\)"):
        MultiStreamData([], split)


def test_duplicate_names_raise():
    with pytest.raises(DataError, match="unique"):
        MultiStreamData([labelled_source("same"), labelled_source("same")], target_split())
    with pytest.raises(DataError, match="unique"):
        MultiStreamData([labelled_source("target")], target_split())


def test_test_and_labelled_class_names_must_agree():
    split = target_split()
    split.test = LabelledStream.from_arrays(
        "target_test", numbered_images(3), [0, 1, 2], ("a", "b", "z")
    )
    with pytest.raises(DataError, match="name different classes"):
        MultiStreamData([], split)


def test_properties():
    data = MultiStreamData([labelled_source()], target_split())
    assert data.image_shape == IMAGE_SHAPE
    assert data.target_class_names == TARGET_CLASSES


def test_train_element_structure():
    batch = 4
    data = MultiStreamData([labelled_source("s1"), labelled_source("s2")], target_split())
    spec = data.train_dataset(batch, seed=0).element_spec
    assert set(spec) == {"sources", "target", "unlabelled"}
    assert isinstance(spec["sources"], tuple)
    assert len(spec["sources"]) == 2
    for x, y in (*spec["sources"], spec["target"], spec["unlabelled"]):
        assert x.shape.as_list() == [batch, *IMAGE_SHAPE]
        assert x.dtype == tf.float32
        assert y.shape.as_list() == [batch]
        assert y.dtype == tf.int32
    element = next(iter(data.train_dataset(batch, seed=0)))
    assert element["sources"][0][0].shape == (batch, *IMAGE_SHAPE)


def test_no_unlabelled_key_without_an_unlabelled_set():
    data = MultiStreamData([], target_split(shots=None))
    spec = data.train_dataset(2, seed=0).element_spec
    assert set(spec) == {"sources", "target"}
    assert spec["sources"] == ()


def test_streams_of_different_sizes_repeat_independently():
    small, large = labelled_source("small", 3), labelled_source("large", 50, first=100)
    data = MultiStreamData([small, large], target_split())
    seen = collections.defaultdict(list)
    for element in data.train_dataset(4, seed=0).take(25).as_numpy_iterator():
        for name, (x, _) in zip(("small", "large"), element["sources"]):
            seen[name].extend(image_numbers(x))
    # 25 steps of 4: 100 examples from each stream. Each pass is a shuffle of the
    # whole stream, so 3 examples appear 33 or 34 times and 50 examples twice each.
    small_counts = collections.Counter(seen["small"])
    assert set(small_counts) == {0, 1, 2}
    assert sorted(small_counts.values()) == [33, 33, 34]
    assert collections.Counter(seen["large"]) == dict.fromkeys(range(100, 150), 2)


def test_train_dataset_is_deterministic_for_a_seed():
    data = MultiStreamData([labelled_source("s1", 10)], target_split())

    def first_numbers(seed):
        element = next(data.train_dataset(4, seed=seed).as_numpy_iterator())
        return image_numbers(element["sources"][0][0]), image_numbers(element["target"][0])

    np.testing.assert_array_equal(first_numbers(5), first_numbers(5))


def test_non_positive_batch_size_raises():
    data = MultiStreamData([], target_split())
    with pytest.raises(DataError, match="global_batch_size must be positive"):
        data.train_dataset(0, seed=0)


def test_test_dataset_order_and_size():
    data = MultiStreamData([], target_split(test_per_class=3))  # 9 test images
    batches = list(data.test_dataset(4).as_numpy_iterator())
    assert [len(y) for _, y in batches] == [4, 4, 1]
    numbers = np.concatenate([image_numbers(x) for x, _ in batches])
    np.testing.assert_array_equal(numbers, np.arange(100, 109))
    np.testing.assert_array_equal(
        np.concatenate([y for _, y in batches]), np.repeat(np.arange(3), 3)
    )
