"""check_model_matches_data: a model and the data it is fitted on must agree."""

import keras
import numpy as np
import pytest

from gradmix_tf.data.streams import DataError, LabelledStream, MultiStreamData, TargetSplit
from gradmix_tf.training.checks import check_model_matches_data
from gradmix_tf.training.gradmix_model import GradMixModel

SHAPE = (8, 8, 1)
TARGET = ("a", "b")
SOURCE = ("x", "y", "z")


def make_data(source_classes=SOURCE, source_name="src", shape=SHAPE, shots=2):
    rng = np.random.default_rng(0)
    source = LabelledStream.from_arrays(
        source_name,
        rng.random((6, *shape), np.float32),
        np.arange(6) % len(source_classes),
        source_classes,
    )
    labels = np.arange(10) % 2
    target = TargetSplit.from_arrays(
        rng.random((10, *shape), np.float32),
        labels,
        rng.random((4, *shape), np.float32),
        labels[:4],
        TARGET,
        shots_per_class=shots,
        seed=0,
    )
    return MultiStreamData([source], target)


def make_model(target=TARGET, sources=(SOURCE,), names=("src",), shape=SHAPE, num_unlabelled=6):
    trunk = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(4)])
    model = GradMixModel(trunk, target, sources, names, num_unlabelled=num_unlabelled)
    model.build((None, *shape))
    return model


def test_matching_model_and_data_pass():
    check_model_matches_data(make_model(), make_data())


@pytest.mark.parametrize(
    "model_kwargs, data_kwargs, message",
    [
        ({"target": ("b", "a")}, {}, r"target stream 'target' names classes \['a', 'b'\]"),
        ({"sources": (), "names": ()}, {}, r"0 source heads.*data has 1 sources"),
        ({"names": ("other",)}, {}, r"source 0 is 'src' in the data but 'other' in the model"),
        ({"sources": (("x", "y"),)}, {}, r"stream 'src' names classes \['x', 'y', 'z'\]"),
        ({"shape": (6, 6, 1)}, {}, r"built for images of shape \(6, 6, 1\).*\(8, 8, 1\)"),
        ({"num_unlabelled": 3}, {}, r"table has 3 entries.*6 unlabelled.*num_unlabelled=6"),
        ({}, {"shots": 5}, r"table has 6 entries but the data has 0 unlabelled"),
    ],
)
def test_mismatches_name_the_culprit(model_kwargs, data_kwargs, message):
    with pytest.raises(DataError, match=message):
        check_model_matches_data(make_model(**model_kwargs), make_data(**data_kwargs))


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (np.array([["a"] * 8] * 8, dtype=str)[None], [0], r"'bad': images must be numeric"),
        (np.zeros((2, 8), np.float32), [0, 1], r"'bad': images must have shape \[N, H, W\]"),
        (np.zeros((2, 8, 8), np.float32), [0.5, 1.0], r"'bad': labels must be integer class ids"),
        (np.zeros((2, 8, 8), np.float32), [[0], [1]], r"'bad': labels must have shape \[N\]"),
    ],
)
def test_user_arrays_of_the_wrong_kind_name_the_stream(images, labels, message):
    with pytest.raises(DataError, match=message):
        LabelledStream.from_arrays("bad", images, labels, ["p", "q"])
