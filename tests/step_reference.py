"""The GradMix step's outputs on the small CNN, recorded as a reference for later versions.

`run_steps(method)` trains a `configs/digits.py:smoke` model (the `small_cnn` trunk) for
`NUM_STEPS` steps of `GradMixModel.train_step` on fixed random batches (two sources, one
with a head of its own, the labelled target and, where the method uses pseudo-labels, the
pseudo-labelled stream) and returns every trainable variable, the mixing weights and the
last step's logs. `tests/data/step_reference.npz` holds these outputs as the per-variable
implementation of the step computed them (commit cc95907); `test_step_reference.py`
checks that the step still computes them, to 1e-5. Rewrite the file only on purpose:

    python -m tests.step_reference
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from configs import digits as digits_config
from gradmix_tf import experiment
from gradmix_tf.data.streams import LabelledStream, MultiStreamData, TargetSplit

REFERENCE_FILE = os.path.join(os.path.dirname(__file__), "data", "step_reference.npz")
METHODS = ("gradmix", "closed_form", "joint", "pcgrad")
NUM_STEPS = 3
IMAGE_SHAPE = (16, 16, 3)
BATCH = 6
NUM_UNLABELLED = 12


def _data() -> MultiStreamData:
    rng = np.random.default_rng(0)

    def stream(name, classes):
        images = rng.uniform(size=(BATCH * 2, *IMAGE_SHAPE)).astype(np.float32)
        return LabelledStream.from_arrays(
            name, images, np.arange(BATCH * 2) % len(classes), classes
        )

    target = TargetSplit.from_arrays(
        rng.uniform(size=(30, *IMAGE_SHAPE)).astype(np.float32),
        np.arange(30) % 3,
        rng.uniform(size=(6, *IMAGE_SHAPE)).astype(np.float32),
        np.arange(6) % 3,
        ("a", "b", "c"),
        shots_per_class=4,
        seed=0,
    )
    return MultiStreamData([stream("other", ("x", "y")), stream("same", ("a", "b", "c"))], target)


def _batches(num_unlabelled: int) -> list[dict]:
    rng = np.random.default_rng(1)

    def pair(num_classes):
        x = tf.constant(rng.uniform(size=(BATCH, *IMAGE_SHAPE)), tf.float32)
        return x, tf.constant(rng.integers(0, num_classes, BATCH), tf.int32)

    batches = []
    for _ in range(NUM_STEPS):
        batch = {"sources": (pair(2), pair(3)), "target": pair(3)}
        if num_unlabelled:
            x = tf.constant(rng.uniform(size=(BATCH, *IMAGE_SHAPE)), tf.float32)
            ids = tf.constant(rng.choice(num_unlabelled, BATCH, replace=False), tf.int32)
            batch["unlabelled"] = (x, ids)
        batches.append(batch)
    return batches


def run_steps(method: str) -> dict[str, np.ndarray]:
    """The outputs of `NUM_STEPS` GradMix steps of `method` (see the module's docstring)."""
    config = digits_config.get_config("smoke")
    config.method = method
    # The step as it was recorded: sources on heads of their own or sharing h_T as it is.
    config.step.label_adapter = False
    config.step.adapter_learning_rate_scale = 1.0
    config = experiment.resolve_config(config)
    data = _data()
    keras.utils.set_random_seed(0)
    model = experiment.build_model(config, data)
    num_unlabelled = model.num_unlabelled
    if num_unlabelled:  # half the table pseudo-labelled, with confidences
        rng = np.random.default_rng(2)
        model.pseudo_labels.assign(rng.integers(-1, 3, num_unlabelled).astype(np.int32))
        model.pseudo_label_weights.assign(
            np.where(model.pseudo_labels.numpy() >= 0, rng.uniform(0.5, 1.0, num_unlabelled), 0.0)
        )
    step = tf.function(model.train_step)
    for batch in _batches(num_unlabelled):
        logs = step(batch)
    outputs = {f"variable_{i}": v.numpy() for i, v in enumerate(model.trainable_variables)}
    outputs["mixing_weights"] = model.mixing_weights.numpy()
    for name in ("rho", "learning_rate_ratio", "loss"):
        outputs[f"log_{name}"] = np.asarray(logs[name])
    return outputs


def main():
    arrays = {}
    for method in METHODS:
        for name, value in run_steps(method).items():
            arrays[f"{method}/{name}"] = value
    np.savez_compressed(REFERENCE_FILE, **arrays)
    print(f"wrote {REFERENCE_FILE}: {len(arrays)} arrays")


if __name__ == "__main__":
    main()
