"""Sources that should not help (`gradmix_tf.tasks.harmful_sources`), for the development tasks."""

from __future__ import annotations

import numpy as np
import pytest

from gradmix_tf.data.streams import DataError
from gradmix_tf.tasks import harmful_sources, raw


def arrays(stream):
    images, labels = zip(*stream.dataset.batch(4096).as_numpy_iterator())
    return np.concatenate(images), np.concatenate(labels)


def test_random_labels_are_noise_on_mnist_5_to_9():
    stream = harmful_sources.random_label_source()
    images, labels = arrays(stream)
    assert stream.name == "mnist_5_9_random_labels" and stream.size == 2500
    assert images.shape == (2500, 32, 32, 3) and 0.0 <= images.min() and images.max() <= 1.0
    assert stream.class_names == tuple(f"r{c}" for c in range(10))
    # Every class is drawn, and the labels say nothing about the digit shown.
    digits = raw.mnist_sample()[1]
    digits = digits[digits >= 5]
    table = np.zeros((5, 10))
    np.add.at(table, (digits - 5, labels), 1)
    assert (table > 0).all()
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    chi2 = ((table - expected) ** 2 / expected).sum()
    assert chi2 < 70  # independence: 36 degrees of freedom, p ~ 0.001 at 67
    # The same for every run.
    np.testing.assert_array_equal(labels, arrays(harmful_sources.random_label_source())[1])


def test_photo_patches_are_a_learnable_task_of_ten_places():
    stream = harmful_sources.photo_patch_source()
    images, labels = arrays(stream)
    assert stream.name == "photo_patches" and stream.size == 3000
    assert images.shape == (3000, 32, 32, 3)
    assert np.bincount(labels).tolist() == [300] * 10
    assert stream.class_names[0] == "china_0" and stream.class_names[-1] == "flower_4"
    # Learnable: the mean colour of a crop alone (nearest class centroid) gets ~30 %, 3x chance.
    means = images.mean(axis=(1, 2))
    centroids = np.stack([means[labels == c].mean(axis=0) for c in range(10)])
    nearest = np.argmin(((means[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (nearest == labels).mean() > 0.2


def test_a_cap_and_an_unknown_name():
    (capped,) = harmful_sources.harmful_sources(["photo_patches"], max_per_class=4)
    assert capped.size == 40
    with pytest.raises(DataError, match="unknown extra source.*'noise'.*known"):
        harmful_sources.harmful_sources(["noise"])


def test_noisy_target_labels_share_the_digit_head_and_are_noise():
    stream = harmful_sources.noisy_target_label_source()
    images, labels = arrays(stream)
    random_images, random_labels = arrays(harmful_sources.random_label_source())
    assert stream.name == "mnist_5_9_noisy_target_labels" and stream.size == 2500
    np.testing.assert_array_equal(images, random_images)  # the same MNIST 5-9 images
    assert stream.class_names == tuple(str(d) for d in range(10))  # a digit target's names
    assert np.bincount(labels, minlength=10).min() > 200  # every class drawn
    # Drawn apart from the other random labels, and as often equal as chance (1 in 10).
    assert 0.05 < (labels == random_labels).mean() < 0.15
    digits = raw.mnist_sample()[1]
    assert 0.05 < (labels == digits[digits >= 5]).mean() < 0.15  # not the true digit
