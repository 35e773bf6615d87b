"""Tests of the pseudo-label and mixing-weight callbacks (`gradmix_tf.callbacks`)."""

from __future__ import annotations

import glob
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf import benchmark
from gradmix_tf.callbacks.mixing_summaries import (
    IMAGE_TAG,
    MixingWeightsLogger,
    render_mixing_weights,
    short_layer_names,
)
from gradmix_tf.callbacks.pseudo_labels import PseudoLabeler, select_pseudo_labels
from gradmix_tf.data.streams import (
    LabelledStream,
    MultiStreamData,
    TargetSplit,
    UnlabelledStream,
)
from gradmix_tf.training.gradmix_model import GradMixModel

TARGET_CLASSES = ("a", "b", "c")
SOURCE_CLASSES = ("x", "y")
NUM_UNLABELLED = 12


def _model(num_unlabelled: int = NUM_UNLABELLED) -> GradMixModel:
    """A built, compiled GradMixModel on a tiny trunk for 8x8x1 images."""
    keras.utils.set_random_seed(0)
    trunk = keras.Sequential(
        [
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(8, name="dense"),
        ],
        name="trunk",
    )
    model = GradMixModel(trunk, TARGET_CLASSES, [SOURCE_CLASSES], num_unlabelled=num_unlabelled)
    model.build((None, 8, 8, 1))
    model.compile(optimizer="sgd")
    return model


def _images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 8, 8, 1)).astype(np.float32)


def _shuffled_stream(images, true_labels=None) -> UnlabelledStream:
    """T_u whose dataset yields (image, id) in a shuffled (not id) order."""
    ids = np.arange(len(images), dtype=np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((images, ids)).shuffle(len(images), seed=3)
    return UnlabelledStream("unlabelled", dataset, len(images), true_labels)


def _schedule(labeler: PseudoLabeler, epochs: int) -> list[int]:
    """The epochs whose end refreshed the pseudo-labels (hooks called by hand)."""
    labeler.on_train_begin()
    refreshed = []
    for epoch in range(epochs):
        logs = {}
        labeler.on_epoch_end(epoch, logs)
        if "pseudo_labels/acceptance" in logs:
            refreshed.append(epoch)
    return refreshed


def _multi_stream_data() -> MultiStreamData:
    """One 2-class source and a 3-class target with NUM_UNLABELLED unlabelled images."""
    rng = np.random.default_rng(0)
    source = LabelledStream.from_arrays(
        "source_1", _images(10, 1), rng.integers(0, 2, 10), SOURCE_CLASSES
    )
    pool = 2 * 3 + NUM_UNLABELLED
    target = TargetSplit.from_arrays(
        _images(pool, 2), np.arange(pool) % 3, _images(6, 3), np.arange(6) % 3,
        TARGET_CLASSES, shots_per_class=2, seed=0,
    )  # fmt: skip
    return MultiStreamData([source], target)


def _event_tags(log_dir: str) -> dict[str, list]:
    """Every tag in the event files of `log_dir`, with its summary values."""
    tags = {}
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append((event.step, value))
    return tags


# ------------------------------------------------------------ select_pseudo_labels
def test_select_threshold_is_inclusive_and_weights_are_the_probability():
    probabilities = [[0.9, 0.1, 0.0], [0.1, 0.89, 0.01], [0.05, 0.0, 0.95], [0.5, 0.5, 0.0]]
    labels, weights = select_pseudo_labels(probabilities, threshold=0.9)
    np.testing.assert_array_equal(labels, [0, -1, 2, -1])
    np.testing.assert_allclose(weights, [0.9, 0.0, 0.95, 0.0])
    assert labels.dtype == np.int32 and weights.dtype == np.float32


def test_select_class_balance_caps_every_class_at_the_smallest_accepted_count():
    # Accepted: class 0 x3 (0.99, 0.97, 0.95), class 1 x2 (0.96, 0.92), class 2 none.
    probabilities = np.array(
        [
            [0.95, 0.05, 0.0],
            [0.99, 0.01, 0.0],
            [0.04, 0.96, 0.0],
            [0.97, 0.03, 0.0],
            [0.08, 0.92, 0.0],
            [0.3, 0.0, 0.7],  # class 2, rejected: does not force m = 0
        ]
    )
    labels, weights = select_pseudo_labels(probabilities, threshold=0.9, class_balance=True)
    # m = 2: class 0 keeps its two most confident (rows 1 and 3), class 1 both.
    np.testing.assert_array_equal(labels, [-1, 0, 1, 0, 1, -1])
    np.testing.assert_allclose(weights, [0.0, 0.99, 0.96, 0.97, 0.92, 0.0])
    unbalanced, _ = select_pseudo_labels(probabilities, threshold=0.9)
    np.testing.assert_array_equal(unbalanced, [0, 0, 1, 0, 1, -1])


@pytest.mark.parametrize("class_balance", [False, True])
def test_select_all_rejected_and_empty(class_balance):
    labels, weights = select_pseudo_labels(
        np.full([4, 3], 1 / 3), threshold=0.9, class_balance=class_balance
    )
    np.testing.assert_array_equal(labels, [-1, -1, -1, -1])
    np.testing.assert_array_equal(weights, np.zeros(4))
    labels, weights = select_pseudo_labels(np.zeros([0, 3]), class_balance=class_balance)
    assert labels.shape == (0,) and weights.shape == (0,)


# ------------------------------------------------------------------ PseudoLabeler
def test_refresh_places_rows_by_id_and_measures_precision():
    model = _model()
    images = _images(NUM_UNLABELLED, 0)
    probabilities = model(images).numpy()  # rows in id order
    predicted, top = probabilities.argmax(1), probabilities.max(1)
    threshold = float(np.median(top))  # about half accepted
    wrong = np.arange(NUM_UNLABELLED) % 3 == 0  # ids whose true label differs
    true_labels = np.where(wrong, (predicted + 1) % 3, predicted)
    labeler = PseudoLabeler(
        _shuffled_stream(images, true_labels), threshold=threshold, batch_size=5
    )

    stats = labeler.refresh(model)

    accepted = top >= threshold
    assert 0 < accepted.sum() < NUM_UNLABELLED
    np.testing.assert_array_equal(model.pseudo_labels.numpy(), np.where(accepted, predicted, -1))
    np.testing.assert_allclose(model.pseudo_label_weights.numpy(), np.where(accepted, top, 0), 1e-5)
    expected_precision = 1.0 - wrong[accepted].mean()
    assert stats["pseudo_labels/acceptance"] == pytest.approx(accepted.mean())
    assert stats["pseudo_labels/precision"] == pytest.approx(expected_precision)
    assert model.pseudo_label_acceptance.numpy() == pytest.approx(accepted.mean())
    assert model.pseudo_label_precision.numpy() == pytest.approx(expected_precision)


def test_precision_stays_zero_without_true_labels():
    model = _model()
    labeler = PseudoLabeler(_shuffled_stream(_images(NUM_UNLABELLED, 0)), threshold=0.0)
    stats = labeler.refresh(model)
    assert stats == {"pseudo_labels/acceptance": 1.0, "pseudo_labels/precision": 0.0}


@pytest.mark.parametrize(
    "warmup_epochs, refresh_every, expected",
    [(0, 1, [0, 1, 2, 3, 4, 5]), (2, 1, [1, 2, 3, 4, 5]), (2, 3, [1, 4]), (0, 2, [1, 3, 5])],
)
def test_refresh_schedule(warmup_epochs, refresh_every, expected):
    labeler = PseudoLabeler(
        _shuffled_stream(_images(NUM_UNLABELLED, 0)), warmup_epochs, refresh_every, threshold=0.0
    )
    labeler.set_model(_model())
    assert _schedule(labeler, epochs=6) == expected


def test_pseudo_labels_survive_a_checkpoint_round_trip(tmp_path):
    model = _model()
    PseudoLabeler(
        _shuffled_stream(_images(NUM_UNLABELLED, 0), np.zeros(12)), threshold=0.5
    ).refresh(model)
    saved = [v.numpy() for v in _pseudo_label_state(model)]
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))

    restored = _model()
    tf.train.Checkpoint(model=restored).restore(path).assert_existing_objects_matched()

    for before, after in zip(saved, _pseudo_label_state(restored)):
        np.testing.assert_array_equal(before, after.numpy())
    assert (saved[0] != 0).any()  # the round trip carried non-initial values


def _pseudo_label_state(model):
    return [
        model.pseudo_labels,
        model.pseudo_label_weights,
        model.pseudo_label_acceptance,
        model.pseudo_label_precision,
    ]


def test_clear_errors_for_a_model_without_a_matching_table():
    stream = _shuffled_stream(_images(NUM_UNLABELLED, 0))
    labeler = PseudoLabeler(stream)
    labeler.set_model(_model(num_unlabelled=0))
    with pytest.raises(ValueError, match="pseudo-label table"):
        labeler.on_train_begin()
    labeler.set_model(_model(num_unlabelled=NUM_UNLABELLED + 1))
    with pytest.raises(ValueError, match="num_unlabelled=12"):
        labeler.on_train_begin()
    with pytest.raises(ValueError, match="needs a model"):
        PseudoLabeler(stream).refresh()


def test_fit_with_both_callbacks(tmp_path):
    data = _multi_stream_data()
    model = _model()
    labeler = PseudoLabeler(data.target.unlabelled, warmup_epochs=1, threshold=0.0)
    logger = MixingWeightsLogger(
        str(tmp_path / "tb"), every_n_steps=2, history_path=str(tmp_path / "w" / "mix.npz")
    )

    history = model.fit(
        data.train_dataset(4, seed=0),
        steps_per_epoch=3,
        epochs=2,
        callbacks=[labeler, logger],
        verbose=0,
        shuffle=False,  # the dataset is shuffled already
    )

    # Pseudo-labels: refreshed after each epoch, visible in the epoch logs.
    assert history.history["pseudo_labels/acceptance"] == [1.0, 1.0]
    assert (model.pseudo_labels.numpy() >= 0).all()
    assert 0.0 <= history.history["pseudo_labels/precision"][-1] <= 1.0
    # Mixing weights: 6 steps, a summary every 2 -> steps 2, 4, 6.
    tags = _event_tags(str(tmp_path / "tb"))
    assert [step for step, _ in tags[IMAGE_TAG]] == [2, 4, 6]
    image_value = tags[IMAGE_TAG][0][1]
    assert image_value.metadata.plugin_data.plugin_name == "images"
    png = tf.make_ndarray(image_value.tensor)[2]
    assert tf.io.decode_png(png).shape[-1] == 4
    assert "mixing_weights/pseudo_labels" in tags
    assert "mixing_weight/source_1/trunk/conv" in tags
    assert "mixing_weight/pseudo_labels/head_target" in tags
    history_file = np.load(tmp_path / "w" / "mix.npz")
    np.testing.assert_array_equal(history_file["steps"], [2, 4, 6])
    assert history_file["weights"].shape == (3, 2, 3)
    np.testing.assert_allclose(history_file["weights"][-1], model.mixing_weights.numpy())
    assert list(history_file["stream_names"]) == ["source_1", "pseudo_labels"]
    assert list(history_file["layer_names"]) == list(model.mixing_layer_names)


# ------------------------------------------------------- PseudoLabeler: EMA weights
class _WeightRecorder(keras.callbacks.Callback):
    """Records the trainable weights at train begin, every batch end and every epoch end."""

    def on_train_begin(self, logs=None):
        self.batch_ends, self.epoch_ends = [self._values()], []

    def on_train_batch_end(self, batch, logs=None):
        self.batch_ends.append(self._values())

    def on_epoch_end(self, epoch, logs=None):  # listed after the labeler: after its refresh
        self.epoch_ends.append(self._values())

    def _values(self):
        return [v.numpy().copy() for v in self.model.trainable_variables]


def _fit_with_ema(labeler, steps_per_execution=1, epochs=2, steps_per_epoch=4):
    """Fits `_model()` with `labeler` and a `_WeightRecorder` after it."""
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.05), steps_per_execution=steps_per_execution)
    recorder = _WeightRecorder()
    model.fit(
        _multi_stream_data().train_dataset(4, seed=0),
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        callbacks=[labeler, recorder],
        verbose=0,
        shuffle=False,  # the dataset is shuffled already
    )
    return model, recorder


def _assert_same_bits(expected, actual):
    assert len(expected) == len(actual)
    for a, b in zip(expected, actual):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("steps_per_execution", [1, 2])
def test_ema_is_the_moving_average_of_the_weights_at_every_batch_end(steps_per_execution):
    decay = 0.7
    labeler = PseudoLabeler(
        _shuffled_stream(_images(NUM_UNLABELLED, 0)),
        warmup_epochs=1,  # refreshes (and swaps) after both epochs
        threshold=0.0,
        ema_decay=decay,
    )
    model, recorder = _fit_with_ema(labeler, steps_per_execution)

    # steps_per_execution=k: Keras reports every k-th batch end; the update uses d**k.
    assert len(recorder.batch_ends) == 1 + 8 // steps_per_execution
    step_decay = decay**steps_per_execution
    expected = [w.astype(np.float64) for w in recorder.batch_ends[0]]
    for weights in recorder.batch_ends[1:]:
        expected = [step_decay * e + (1 - step_decay) * w for e, w in zip(expected, weights)]
    ema = [v.numpy() for v in labeler.ema_weights]
    assert [e.shape for e in ema] == [tuple(v.shape) for v in model.trainable_variables]
    for e, x in zip(ema, expected):
        np.testing.assert_allclose(e, x, rtol=1e-5, atol=1e-6)
    live = recorder.batch_ends[-1]
    assert all(np.isfinite(w).all() for w in live)
    assert max(np.abs(e - w).max() for e, w in zip(ema, live)) > 1e-3  # a real average
    # The refreshes after each epoch predicted with the average and put the live
    # weights back bit for bit: the epoch ends (after the refresh) hold the
    # weights of the last batch end (before it), and training went on from them.
    per_epoch = len(recorder.batch_ends) // 2
    _assert_same_bits(recorder.batch_ends[per_epoch], recorder.epoch_ends[0])
    _assert_same_bits(live, recorder.epoch_ends[1])
    _assert_same_bits(live, [v.numpy() for v in model.trainable_variables])
    assert (model.pseudo_labels.numpy() >= 0).all()


def test_refresh_with_ema_predicts_with_the_average_and_restores_the_live_weights():
    images = _images(NUM_UNLABELLED, 0)
    labeler = PseudoLabeler(
        _shuffled_stream(images), warmup_epochs=100, threshold=0.0, batch_size=5, ema_decay=0.8
    )
    model, _ = _fit_with_ema(labeler, epochs=1)
    live = [v.numpy().copy() for v in model.trainable_variables]
    ema = [v.numpy().copy() for v in labeler.ema_weights]

    stats = labeler.refresh()

    _assert_same_bits(live, [v.numpy() for v in model.trainable_variables])
    _assert_same_bits(ema, [v.numpy() for v in labeler.ema_weights])
    clone = _model()  # same architecture, set to the average
    for variable, value in zip(clone.trainable_variables, ema):
        variable.assign(value)
    expected_labels, expected_weights = select_pseudo_labels(clone(images).numpy(), 0.0)
    np.testing.assert_array_equal(model.pseudo_labels.numpy(), expected_labels)
    np.testing.assert_allclose(model.pseudo_label_weights.numpy(), expected_weights, atol=1e-6)
    _, live_weights = select_pseudo_labels(model(images).numpy(), 0.0)
    assert np.abs(live_weights - expected_weights).max() > 1e-4  # the test can tell them apart
    assert stats["pseudo_labels/acceptance"] == 1.0


@pytest.mark.parametrize("ema_decay", [None, 0, 0.0])
def test_no_ema_predicts_with_the_current_weights(ema_decay):
    images = _images(NUM_UNLABELLED, 0)
    labeler = PseudoLabeler(_shuffled_stream(images), warmup_epochs=1, ema_decay=ema_decay)
    assert labeler.get_config()["ema_decay"] == ema_decay
    assert labeler.async_safe  # the batch hook is a no-op: dispatch is as without it
    model, recorder = _fit_with_ema(labeler, epochs=1, steps_per_epoch=2)

    assert labeler.ema_weights is None
    _assert_same_bits(recorder.batch_ends[-1], recorder.epoch_ends[0])
    labeler.threshold = 0.0
    labeler.refresh()
    expected_labels, expected_weights = select_pseudo_labels(model(images).numpy(), 0.0)
    np.testing.assert_array_equal(model.pseudo_labels.numpy(), expected_labels)
    np.testing.assert_allclose(model.pseudo_label_weights.numpy(), expected_weights, atol=1e-6)


def test_ema_refresh_before_any_training_uses_the_current_weights():
    images = _images(NUM_UNLABELLED, 0)
    model = _model()
    labeler = PseudoLabeler(_shuffled_stream(images), threshold=0.0, ema_decay=0.9)
    assert not labeler.async_safe
    labeler.refresh(model)  # no train begin: no average yet
    assert labeler.ema_weights is None
    _, expected_weights = select_pseudo_labels(model(images).numpy(), 0.0)
    np.testing.assert_allclose(model.pseudo_label_weights.numpy(), expected_weights, atol=1e-6)
    labeler.on_train_begin()  # starts the average from the current weights, exactly
    _assert_same_bits(
        [v.numpy() for v in model.trainable_variables], [v.numpy() for v in labeler.ema_weights]
    )


@pytest.mark.parametrize("bad", [-0.1, 1, 1.0, 1.5, float("nan"), "0.9x", True, [0.9]])
def test_ema_decay_must_be_in_zero_one(bad):
    with pytest.raises(ValueError, match=r"ema_decay must be None \(or 0\).*0 < d < 1"):
        PseudoLabeler(_shuffled_stream(_images(NUM_UNLABELLED, 0)), ema_decay=bad)


def test_get_config_round_trips_ema_decay():
    stream = _shuffled_stream(_images(NUM_UNLABELLED, 0))
    config = PseudoLabeler(stream, threshold=0.8, ema_decay=0.99).get_config()
    assert config["ema_decay"] == 0.99
    assert PseudoLabeler(stream, **config).get_config() == config


# ------------------------------------------------------------- mixing weight image
def test_render_mixing_weights():
    weights = np.array([[0.0, 0.5, 1.0], [1.0, 0.5, 0.0]])
    names = ["gradmix/sequential/conv2d", "gradmix/sequential/dense", "gradmix/head_target"]
    image = render_mixing_weights(weights, ["mnist", "pseudo_labels"], names, title="step 1")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] in (3, 4)
    other = render_mixing_weights(weights[::-1], ["mnist", "pseudo_labels"], names)
    assert image.shape == other.shape and not np.array_equal(image, other)
    empty = render_mixing_weights(np.zeros([0, 3]), [], names)
    assert empty.dtype == np.uint8 and empty.ndim == 3


def test_names_in_scripts_the_font_lacks_draw_without_warnings(tmp_path):
    weights = np.array([[0.2, 0.8], [0.5, 0.5]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        render_mixing_weights(weights, ["猫の写真", "犬"], ["trunk/conv", "head_target"])
        summary = [{"method": "猫", "n": 1, "mean": 0.5, "std": 0.0, "accuracies": [0.5]}]
        benchmark.plot_summary(summary, str(tmp_path / "summary.png"), "写真")
    assert not [w for w in caught if "Glyph" in str(w.message)], [str(w.message) for w in caught]


def test_short_layer_names():
    assert short_layer_names(["gradmix/trunk/conv", "gradmix/head_target"]) == [
        "trunk/conv",
        "head_target",
    ]
    assert short_layer_names(["gradmix/head_target"]) == ["head_target"]
    assert short_layer_names([]) == []


# ------------------------------------------------------------------ tf.distribute
def _fit_under(strategy: tf.distribute.Strategy, log_dir: str, ema_decay=None):
    """Fits 2 steps under `strategy` with both callbacks and checks their state."""
    data = _multi_stream_data()
    with strategy.scope():
        model = _model()
    labeler = PseudoLabeler(
        data.target.unlabelled, warmup_epochs=1, threshold=0.0, ema_decay=ema_decay
    )
    logger = MixingWeightsLogger(log_dir, every_n_steps=1)
    model.fit(
        data.train_dataset(4, seed=0),
        steps_per_epoch=2,
        epochs=1,
        callbacks=[labeler, logger],
        verbose=0,
        shuffle=False,  # the dataset is shuffled already
    )
    assert (model.pseudo_labels.numpy() >= 0).all(), model.pseudo_labels.numpy()
    assert model.pseudo_label_acceptance.numpy() == 1.0
    assert logger.steps == [1, 2], logger.steps
    np.testing.assert_allclose(logger.weights[-1], model.mixing_weights.numpy())
    if ema_decay:
        _check_ema_refresh_under(model, labeler, data.target.unlabelled)


def _replica_values(model) -> list[np.ndarray]:
    """Every replica's copy of every trainable variable."""
    values = []
    for variable in model.trainable_variables:
        value = variable.value
        values += [v.numpy() for v in getattr(value, "values", [value])]
    return values


def _check_ema_refresh_under(model, labeler, unlabelled):
    """A refresh predicts with the average and writes every replica back, bit for bit."""
    live = _replica_values(model)
    ema = [v.numpy() for v in labeler.ema_weights]
    labeler.refresh()
    _assert_same_bits(live, _replica_values(model))
    clone = _model()  # outside the strategy, set to the average
    for variable, value in zip(clone.trainable_variables, ema):
        variable.assign(value)
    images, ids = (np.stack(t) for t in zip(*unlabelled.dataset.as_numpy_iterator()))
    expected = np.zeros([unlabelled.size], np.float32)
    expected[ids] = clone(images).numpy().max(1)
    np.testing.assert_allclose(model.pseudo_label_weights.numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("ema_decay", [None, 0.5])
def test_callbacks_under_mirrored_strategy_one_replica(tmp_path, ema_decay):
    _fit_under(tf.distribute.MirroredStrategy(["/cpu:0"]), str(tmp_path / "tb"), ema_decay)


def test_callbacks_under_mirrored_strategy_two_replicas(tmp_path, two_replicas):
    _fit_under(two_replicas, str(tmp_path / "tb_plain"))
    _fit_under(two_replicas, str(tmp_path / "tb_ema"), ema_decay=0.5)
