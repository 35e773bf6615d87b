"""The array contract of `gradmix_tf.data.streams`: values, label ids, an empty unlabelled set.

Float examples must be finite and in [0, 1]; integer ones are scaled by their bit depth;
labels are integer ids `[N]`. A k-shot split whose shots take the whole pool has an empty
unlabelled set, and the training script of docs/your_data.md trains on it unchanged.
"""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf.callbacks.pseudo_labels import PseudoLabeler
from gradmix_tf.data.streams import (
    DataError,
    LabelledStream,
    MultiStreamData,
    TargetSplit,
    UnlabelledStream,
)
from gradmix_tf.networks.trunks import small_cnn
from gradmix_tf.training.checks import check_model_matches_data
from gradmix_tf.training.gradmix_model import GradMixModel

CLASSES = ("a", "b")


def images(count: int = 4, shape=(4, 4, 1), dtype=np.uint8, high: float = 255) -> np.ndarray:
    """`count` images of `shape`, image i filled with `high * i / (count - 1)`."""
    values = np.linspace(0, high, count).reshape(-1, *[1] * len(shape))
    return np.broadcast_to(values, (count, *shape)).astype(dtype)


def labels(count: int = 4) -> np.ndarray:
    return np.arange(count) % len(CLASSES)


def first_values(stream) -> np.ndarray:
    return np.array([x[0, 0, 0] for x, _ in stream.dataset.as_numpy_iterator()])


# ------------------------------------------------------------------ values
def test_float_images_in_0_255_are_refused_with_the_fix():
    with pytest.raises(DataError) as raised:
        LabelledStream.from_arrays("cars", images(dtype=np.float32), labels(), CLASSES)
    message = str(raised.value)
    assert "stream 'cars'" in message
    assert "must have values in [0, 1], found values in [0, 255]" in message
    assert "divide them by 255" in message


@pytest.mark.parametrize(
    "build",
    [
        lambda x: UnlabelledStream.from_arrays("pool", x),
        lambda x: TargetSplit.from_arrays(x, labels(), x, labels(), CLASSES, 1, seed=0),
        lambda x: LabelledStream.from_arrays("clips", x[:, None].repeat(2, 1), labels(), CLASSES),
    ],
    ids=["unlabelled", "target_split", "clips"],
)
def test_every_from_arrays_refuses_float_pixel_values(build):
    with pytest.raises(DataError, match=r"found values in \[0, 255\].*divide them by 255"):
        build(images(dtype=np.float64))


def test_float_images_in_0_1_pass_unchanged():
    x = images(dtype=np.float32, high=1.0)
    stream = LabelledStream.from_arrays("cars", x, labels(), CLASSES)
    np.testing.assert_array_equal(first_values(stream), x[:, 0, 0, 0])


@pytest.mark.parametrize(
    ("x", "fix"),
    [
        (images(dtype=np.float32, high=1.02), r"clip them to \[0, 1\]"),
        (images(dtype=np.float32, high=60000.0), "Divide them by 65535"),
        (images(dtype=np.float32, high=2.0) - 1.0, r"\(images \+ 1\) / 2"),
        (images(dtype=np.float32, high=1e6) - 5.0, r"rescale them to \[0, 1\]"),
    ],
    ids=["overshoot", "16_bit", "minus_one_to_one", "other"],
)
def test_float_images_out_of_range_name_a_fix_for_their_range(x, fix):
    with pytest.raises(DataError, match=fix):
        LabelledStream.from_arrays("cars", x, labels(), CLASSES)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_images_are_refused(bad):
    x = images(dtype=np.float32, high=1.0)
    x[2, 1, 1, 0] = bad
    with pytest.raises(DataError, match=r"'cars'.*1 NaN or infinite values.*first at index 2"):
        LabelledStream.from_arrays("cars", x, labels(), CLASSES)


def test_uint8_and_uint16_are_scaled_by_their_bit_depth():
    eight = LabelledStream.from_arrays("eight", images(dtype=np.uint8), labels(), CLASSES)
    sixteen = LabelledStream.from_arrays(
        "sixteen", images(dtype=np.uint16, high=65535), labels(), CLASSES
    )
    np.testing.assert_allclose(first_values(eight), [0, 85 / 255, 170 / 255, 1], atol=1e-7)
    np.testing.assert_allclose(first_values(sixteen), first_values(eight), atol=1e-7)


def test_other_integer_dtypes_hold_8_bit_values():
    wide = LabelledStream.from_arrays("wide", images(dtype=np.int64), labels(), CLASSES)
    np.testing.assert_allclose(first_values(wide), [0, 85 / 255, 170 / 255, 1], atol=1e-7)
    with pytest.raises(DataError, match=r"'wide'.*int32.*found values in \[0, 4095\].*uint16"):
        LabelledStream.from_arrays("wide", images(dtype=np.int32, high=4095), labels(), CLASSES)


# ------------------------------------------------------------------ labels
def test_one_hot_labels_are_refused_with_the_fix():
    one_hot = np.eye(len(CLASSES))[labels()]
    with pytest.raises(DataError) as raised:
        LabelledStream.from_arrays("cars", images(), one_hot, CLASSES)
    message = str(raised.value)
    assert "stream 'cars'" in message and "shape (4, 2)" in message
    assert "one-hot" in message and "labels.argmax(axis=1)" in message


def test_one_hot_labels_in_a_target_split_are_a_data_error_not_an_index_error():
    one_hot = np.eye(len(CLASSES))[labels()]
    with pytest.raises(DataError, match=r"'target'.*one-hot.*labels.argmax\(axis=1\)"):
        TargetSplit.from_arrays(images(), one_hot, images(), labels(), CLASSES, 1, seed=0)
    with pytest.raises(DataError, match=r"'target_test'.*labels.argmax\(axis=1\)"):
        TargetSplit.from_arrays(images(), labels(), images(), one_hot, CLASSES, 1, seed=0)


def test_one_hot_true_labels_and_dataset_labels_are_refused():
    with pytest.raises(DataError, match=r"'pool'.*true_labels.argmax\(axis=1\)"):
        UnlabelledStream.from_arrays("pool", images(), np.eye(2)[labels()])
    dataset = tf.data.Dataset.from_tensor_slices((images(dtype=np.float32), np.eye(2)[labels()]))
    with pytest.raises(DataError, match=r"'cars'.*one-hot.*tf.argmax"):
        LabelledStream.from_dataset("cars", dataset, CLASSES)


def test_column_labels_say_reshape():
    with pytest.raises(DataError, match=r"shape \[N\], got \(4, 1\): pass labels.reshape\(-1\)"):
        LabelledStream.from_arrays("cars", images(), labels()[:, None], CLASSES)


def test_a_target_split_with_more_labels_than_images_names_both_counts():
    with pytest.raises(DataError, match="'target': 4 images but 6 labels"):
        TargetSplit.from_arrays(images(), labels(6), images(), labels(), CLASSES, 1, seed=0)


# ------------------------------------------------- an empty unlabelled set
def test_shots_taking_the_whole_pool_leave_an_empty_unlabelled_stream():
    target = TargetSplit.from_arrays(images(), labels(), images(), labels(), CLASSES, 2, seed=0)
    assert target.labelled.size == 4
    assert target.unlabelled.size == 0
    assert target.unlabelled.image_shape == (4, 4, 1)
    assert list(target.unlabelled.dataset) == []
    data = MultiStreamData([], target)
    assert set(data.train_dataset(2, seed=0).element_spec) == {"sources", "target"}
    # The oracle setting keeps its None.
    oracle = TargetSplit.from_arrays(images(), labels(), images(), labels(), CLASSES, None, 0)
    assert oracle.unlabelled is None


def readme_data():
    """The inputs of docs/your_data.md's script, tiny: 10 labelled a class and nothing left."""
    rng = np.random.default_rng(0)
    x = lambda n: rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)  # noqa: E731
    sources = [
        LabelledStream.from_arrays("cars", x(8), np.arange(8) % 2, class_names=("c0", "c1")),
        LabelledStream.from_arrays(
            "planes", x(8), np.arange(8) % 3, class_names=("p0", "p1", "p2")
        ),
    ]
    target = TargetSplit.from_arrays(
        x(20), np.arange(20) % 2, x(6), np.arange(6) % 2, class_names=CLASSES, shots_per_class=10,
        seed=0,
    )  # fmt: skip
    return sources, target


def test_the_readme_example_trains_on_a_target_with_no_unlabelled_image(caplog):
    sources, target = readme_data()
    data = MultiStreamData(sources, target)
    model = GradMixModel(
        small_cnn(filters=(4,), dense_units=8),
        CLASSES,
        [s.class_names for s in sources],
        [s.name for s in sources],
        num_unlabelled=target.unlabelled.size,
    )
    model.build((None, *data.image_shape))
    check_model_matches_data(model, data)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    labeler = PseudoLabeler(target.unlabelled, warmup_epochs=1, refresh_every=1)
    with caplog.at_level(logging.INFO, logger="absl"):
        history = model.fit(
            data.train_dataset(global_batch_size=4, seed=0),
            steps_per_epoch=2,
            epochs=2,
            callbacks=[labeler],
            verbose=0,
        )
    assert model.stream_names == ("cars", "planes")  # no pseudo-labelled stream
    assert not any(key.startswith("pseudo_labels") for key in history.history)
    lines = [r.getMessage() for r in caplog.records if "Pseudo-labels" in r.getMessage()]
    assert lines == [
        "Pseudo-labels: the unlabelled stream 'target_unlabelled' has no examples; nothing to "
        "label, the model has no pseudo-labelled stream."
    ]
    results = model.evaluate(data.test_dataset(256), return_dict=True, verbose=0)
    assert 0.0 <= results["accuracy"] <= 1.0
    assert labeler.refresh(model) == {}


def test_a_pseudo_label_table_for_an_empty_unlabelled_stream_is_refused():
    _, target = readme_data()
    model = GradMixModel(small_cnn(filters=(4,), dense_units=8), CLASSES, num_unlabelled=5)
    labeler = PseudoLabeler(target.unlabelled)
    labeler.set_model(model)
    with pytest.raises(ValueError, match="5 rows but.*'target_unlabelled' has no examples"):
        labeler.on_train_begin()
