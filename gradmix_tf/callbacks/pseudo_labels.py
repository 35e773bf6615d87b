"""Pseudo-labels for the unlabelled target set T_u (docs/algorithm.md, "Pseudo-labels").

`select_pseudo_labels` is the selection rule, pure numpy. `PseudoLabeler` is
the Keras callback that, after a warm-up and then every few epochs, predicts
T_u with the current model (optionally with an exponential moving average of
its weights), applies the rule and writes the result into the
pseudo-label table the model owns (`GradMixModel.pseudo_labels`, indexed by
the example ids `UnlabelledStream` yields). The train step reads that table
to build the pseudo-labelled stream P.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from gradmix_tf.data.streams import UnlabelledStream

REJECTED = -1


def select_pseudo_labels(
    probabilities, threshold: float = 0.9, class_balance: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Keeps the examples whose top class probability is at least `threshold`.

    Class balancing (optional): every class keeps at most `m` of its accepted
    examples, its `m` most confident ones (ties: the lower row first), where
    `m` is the smallest accepted count among the classes that have at least
    one accepted example. Classes with no accepted example do not set `m`:
    otherwise one class the model is never sure of would switch pseudo-labels
    off for every class.

    Args:
        probabilities: `[N, C]` class probabilities.
        threshold: tau; `top probability >= threshold` is accepted.
        class_balance: cap every class at the same number of examples.

    Returns:
        (labels int32 `[N]`, the top class or -1 when rejected;
         weights float32 `[N]`, the top probability when accepted, else 0).
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities must have shape [N, C], got {probabilities.shape}.")
    num_examples, num_classes = probabilities.shape
    if num_examples == 0 or num_classes == 0:
        return np.full([num_examples], REJECTED, np.int32), np.zeros([num_examples], np.float32)
    top_class = np.argmax(probabilities, axis=1).astype(np.int32)
    confidence = probabilities[np.arange(num_examples), top_class]
    accepted = confidence >= threshold
    if class_balance and accepted.any():
        accepted = _balance_classes(top_class, confidence, accepted)
    labels = np.where(accepted, top_class, REJECTED).astype(np.int32)
    weights = np.where(accepted, confidence, 0.0).astype(np.float32)
    return labels, weights


def _check_ema_decay(ema_decay) -> float | None:
    """`None` or a float in [0, 1); a clear ValueError otherwise."""
    if ema_decay is None:
        return None
    try:
        value = float(ema_decay)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(ema_decay, bool) or not 0.0 <= value < 1.0:
        raise ValueError(
            "ema_decay must be None (or 0) to predict with the current weights, or a "
            f"decay d with 0 < d < 1 to predict with their moving average; got {ema_decay!r}."
        )
    return value


def _same_variables(pairs, variables) -> bool:
    """Whether `pairs` averages exactly `variables` (identity, in order)."""
    return len(pairs) == len(variables) and all(v is w for (v, _), w in zip(pairs, variables))


def _compiled_update(update):
    """`update(decay)` as one XLA-compiled function (a few fused kernels, not a
    few ops a variable), or traced without XLA where XLA cannot compile it."""
    spec = tf.TensorSpec([], tf.float32)
    try:
        compiled = tf.function(update, jit_compile=True).get_concrete_function(spec)
        compiled(tf.constant(1.0))  # compiles now; decay 1 leaves the average as it is
        return compiled
    except (tf.errors.OpError, ValueError, NotImplementedError) as error:
        logging.info("Pseudo-labels: EMA update without XLA (%s).", error)
        return tf.function(update).get_concrete_function(spec)


def _balance_classes(top_class, confidence, accepted) -> np.ndarray:
    """Keeps the `m` most confident accepted examples of every class."""
    counts = np.bincount(top_class[accepted])
    per_class = counts[counts > 0].min()  # m
    order = np.argsort(-confidence, kind="stable")  # most confident first
    balanced = np.zeros_like(accepted)
    for c in np.flatnonzero(counts):
        members = order[accepted[order] & (top_class[order] == c)]
        balanced[members[:per_class]] = True
    return balanced


class PseudoLabeler(keras.callbacks.Callback):
    """Refreshes the model's pseudo-labels for T_u after a warm-up, every few epochs.

    At the end of epoch `e` (0-based, absolute: resumed runs keep counting),
    with `done = e + 1` epochs completed, it refreshes when
    `done >= warmup_epochs` and `(done - warmup_epochs) % refresh_every == 0`:
    the first refresh right after the warm-up, then every `refresh_every`
    epochs. A refresh predicts every example of `unlabelled` with
    `model(x, training=False)` (target class probabilities), places each row
    by the id the stream yields, applies `select_pseudo_labels` and assigns
    the model's `pseudo_labels`, `pseudo_label_weights`,
    `pseudo_label_acceptance` (accepted fraction) and `pseudo_label_precision`
    (accuracy of the accepted labels against `unlabelled.true_labels`, when
    known; else 0). It adds `pseudo_labels/acceptance` and
    `pseudo_labels/precision` to the epoch logs and logs one line.

    EMA weights (`ema_decay=d`, 0 < d < 1): the callback keeps an exponential
    moving average of the model's trainable variables in `tf.Variable`s of its
    own (`ema_weights`, in `model.trainable_variables` order). They are
    created, or reset, at every train begin from the current weights and
    updated at every train batch end by one XLA-compiled function for all of
    them (compiled at train begin; traced without XLA where XLA is
    unavailable): `ema = d * ema + (1 - d) * w`. (With `steps_per_execution=k`
    Keras reports one batch end per `k` steps; the update then uses `d**k`, so
    the average keeps its time constant in steps.) A refresh swaps the EMA
    values into the model, predicts T_u, and swaps the live weights back
    exactly, bit for bit: training continues from the live weights, and the
    stored pseudo-labels come from the averaged ones. Non-trainable variables
    (e.g. batch-norm statistics) are not averaged; the prediction uses their
    live values. The average is not part of any checkpoint: after a resume (or
    any new `fit`) it restarts from the weights the model has at train begin,
    e.g. the restored ones. A `refresh` for a model that has no average yet
    (no train begin with this callback, or another model) predicts with the
    current weights, which is what the average would hold at that point.
    `ema_decay=None` or `0` predicts with the current weights and adds no
    per-batch work.

    The pseudo-label state lives in the model's non-trainable variables, so a
    checkpoint of the model saves and restores it; the callback holds
    nothing but its configuration and, with `ema_decay`, the moving average.
    Assignments happen outside replica context, so it works under
    `tf.distribute` (prediction runs on the default device; the average
    reads the primary replica's values, and the swaps write every replica).

    An empty T_u (size 0, e.g. a k-shot split whose shots take the whole
    pool, or None) has nothing to label: with a model of `num_unlabelled=0`
    (no pseudo-labelled stream) the callback logs one line at train begin
    and does nothing else.

    Args:
        unlabelled: T_u; its `size` must equal the model's `num_unlabelled`.
        warmup_epochs: epochs trained before the first refresh.
        refresh_every: epochs between refreshes.
        threshold: tau, the smallest top probability accepted.
        class_balance: at most the same number of pseudo-labels a class
            (see `select_pseudo_labels`).
        batch_size: prediction batch size.
        ema_decay: `None` or `0`: predict with the current weights; a decay
            `d` in (0, 1): predict with an exponential moving average of the
            trainable weights (see above).

    Example:

    >>> labeler = PseudoLabeler(data.target.unlabelled, warmup_epochs=5)
    >>> model.fit(data.train_dataset(64, seed=0), steps_per_epoch=100, epochs=30,
    ...           callbacks=[labeler])
    >>> ema_labeler = PseudoLabeler(data.target.unlabelled, warmup_epochs=5, ema_decay=0.99)
    """

    def __init__(
        self,
        unlabelled: UnlabelledStream | None,
        warmup_epochs: int = 5,
        refresh_every: int = 1,
        threshold: float = 0.9,
        class_balance: bool = False,
        batch_size: int = 256,
        ema_decay: float | None = None,
    ):
        super().__init__()
        if warmup_epochs < 0 or refresh_every < 1 or batch_size < 1:
            raise ValueError(
                "need warmup_epochs >= 0, refresh_every >= 1 and batch_size >= 1, got "
                f"{warmup_epochs}, {refresh_every}, {batch_size}."
            )
        self.unlabelled = unlabelled
        self.warmup_epochs = int(warmup_epochs)
        self.refresh_every = int(refresh_every)
        self.threshold = float(threshold)
        self.class_balance = bool(class_balance)
        self.batch_size = int(batch_size)
        self.ema_decay = _check_ema_decay(ema_decay)
        # Without an average the batch hook does nothing: safe to dispatch
        # asynchronously, as before it existed. With one it must run between
        # two steps, never concurrently with the next.
        self.async_safe = not self.ema_decay
        self._ema_model = None  # the model the average belongs to
        self._ema_pairs = []  # (model variable, its average)
        self._ema_update = None  # traced: one call updates every average
        self._ema_swap = None  # traced: exchanges the model's values and the averages
        self._ema_decays = {}  # steps since the last update -> decay tensor
        self._last_batch = -1

    @property
    def ema_weights(self) -> list[tf.Variable] | None:
        """The averages, in `model.trainable_variables` order; `None` before train begin."""
        return [ema for _, ema in self._ema_pairs] if self._ema_model is not None else None

    def get_config(self) -> dict:
        """Every constructor argument except the stream itself."""
        return {
            "warmup_epochs": self.warmup_epochs,
            "refresh_every": self.refresh_every,
            "threshold": self.threshold,
            "class_balance": self.class_balance,
            "batch_size": self.batch_size,
            "ema_decay": self.ema_decay,
        }

    def refreshes_after(self, epoch: int) -> bool:
        """Whether the end of (0-based) `epoch` refreshes the pseudo-labels."""
        done = epoch + 1
        return done >= self.warmup_epochs and (done - self.warmup_epochs) % self.refresh_every == 0

    def on_train_begin(self, logs=None):
        if self._nothing_to_label(self.model, log=True):
            return
        self._check_model(self.model)
        if self.ema_decay:
            self._start_ema(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self._last_batch = -1  # Keras numbers the batches from 0 in every epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._ema_update is None:
            return
        steps = batch - self._last_batch  # > 1 with steps_per_execution > 1
        self._last_batch = batch
        decay = self._ema_decays.get(steps)
        if decay is None:
            decay = tf.constant(self.ema_decay ** max(steps, 1), tf.float32)
            self._ema_decays[steps] = decay
        self._ema_update(decay)

    def on_epoch_end(self, epoch, logs=None):
        if self._nothing_to_label(self.model) or not self.refreshes_after(epoch):
            return
        stats = self.refresh(epoch=epoch)
        if logs is not None:
            logs.update(stats)

    def refresh(self, model: keras.Model | None = None, epoch: int | None = None) -> dict:
        """Predicts T_u, selects pseudo-labels and stores them in the model.

        Args:
            model: the model to label with and write to; default the model
                this callback is attached to (`set_model`, or `fit`).
            epoch: only for the log line.

        Returns:
            `{"pseudo_labels/acceptance": float, "pseudo_labels/precision": float}`;
            `{}` when T_u is empty (nothing to label).
        """
        if model is not None:
            self.set_model(model)
        model = self.model
        if model is None:
            raise ValueError("PseudoLabeler.refresh() needs a model: pass it or call set_model.")
        if self._nothing_to_label(model):
            return {}
        self._check_model(model)
        if self.ema_decay and self._ema_model is model:
            self._ema_swap()  # the model now holds the averages, the averages the live weights
            try:
                probabilities, seen = self._predict(model)
            finally:
                self._ema_swap()  # back, bit for bit
        else:
            probabilities, seen = self._predict(model)
        labels, weights = select_pseudo_labels(probabilities, self.threshold, self.class_balance)
        labels[~seen] = REJECTED
        weights[~seen] = 0.0
        accepted = labels != REJECTED
        acceptance = float(accepted.mean())
        precision = self._precision(labels, accepted)
        model.pseudo_labels.assign(labels)
        model.pseudo_label_weights.assign(weights)
        model.pseudo_label_acceptance.assign(acceptance)
        model.pseudo_label_precision.assign(precision)
        when = "" if epoch is None else f" after epoch {epoch + 1}"
        logging.info(
            "Pseudo-labels refreshed%s: %d/%d accepted (%.1f%%, threshold %.2f), precision %s.",
            when,
            int(accepted.sum()),
            len(labels),
            100.0 * acceptance,
            self.threshold,
            "unknown" if self.unlabelled.true_labels is None else f"{precision:.3f}",
        )
        return {"pseudo_labels/acceptance": acceptance, "pseudo_labels/precision": precision}

    def _nothing_to_label(self, model, log: bool = False) -> bool:
        """Whether T_u is empty (or None), for a model without a pseudo-label table."""
        if self.unlabelled is not None and self.unlabelled.size:
            return False
        name = "(none)" if self.unlabelled is None else f"'{self.unlabelled.name}'"
        size = int(getattr(model, "num_unlabelled", 0) or 0)
        if size:
            raise ValueError(
                f"the model's pseudo-label table has {size} rows but the unlabelled stream "
                f"{name} has no examples: build the model with num_unlabelled=0 (no "
                "pseudo-labelled stream)."
            )
        if log:
            logging.info(
                "Pseudo-labels: the unlabelled stream %s has no examples; nothing to label, "
                "the model has no pseudo-labelled stream.",
                name,
            )
        return True

    def _check_model(self, model):
        size = int(getattr(model, "num_unlabelled", 0) or 0)
        if size == 0 or not hasattr(model, "pseudo_labels"):
            raise ValueError(
                "PseudoLabeler needs a model with a pseudo-label table: build "
                f"GradMixModel(..., num_unlabelled={self.unlabelled.size}) (the size of T_u)."
            )
        if size != self.unlabelled.size:
            raise ValueError(
                f"the model's pseudo-label table has {size} rows but the unlabelled stream "
                f"'{self.unlabelled.name}' has {self.unlabelled.size} examples: build the "
                f"model with num_unlabelled={self.unlabelled.size}."
            )
        true_labels = self.unlabelled.true_labels
        if true_labels is not None and np.shape(true_labels) != (size,):
            raise ValueError(
                f"unlabelled.true_labels must have shape [{size}], got {np.shape(true_labels)}."
            )

    def _start_ema(self, model):
        """(Re)starts the average of `model`'s trainable variables from their values."""
        variables = list(model.trainable_variables)
        if model is self._ema_model and _same_variables(self._ema_pairs, variables):
            for variable, ema in self._ema_pairs:  # same model: reuse, no retracing
                ema.assign(variable)
            self._last_batch = -1
            return
        # Plain variables on the default device, like the prediction; under
        # tf.distribute they read the primary replica of mirrored variables.
        pairs = [
            (v, tf.Variable(tf.convert_to_tensor(v), trainable=False, name=f"ema_{i}"))
            for i, v in enumerate(variables)
        ]

        def update(decay):
            for variable, ema in pairs:
                ema.assign(decay * ema + (1.0 - decay) * tf.cast(variable, ema.dtype))

        def swap():
            for variable, ema in pairs:
                live = tf.identity(variable)  # ops on one variable run in program order
                variable.assign(ema)
                ema.assign(live)

        self._ema_model, self._ema_pairs, self._last_batch = model, pairs, -1
        self._ema_update = _compiled_update(update)
        self._ema_swap = tf.function(swap)

    def _predict_function(self, model):
        """One traced inference function per model, reused across refreshes."""
        if getattr(self, "_predict_model", None) is not model:
            self._predict_model = model
            self._predict_fn = tf.function(
                lambda x: model(x, training=False), reduce_retracing=True
            )
        return self._predict_fn

    def _predict(self, model) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities `[N, C]` in id order, and which ids the stream yielded."""
        dataset = self.unlabelled.dataset
        if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise ValueError(
                f"the unlabelled stream '{self.unlabelled.name}' is infinite (repeated): "
                "PseudoLabeler needs to see every example once."
            )
        size = self.unlabelled.size
        probabilities, seen = None, np.zeros([size], bool)
        predict = self._predict_function(model)
        for x, ids in dataset.batch(self.batch_size).prefetch(tf.data.AUTOTUNE):
            ids = ids.numpy()
            if ids.size and (ids.min() < 0 or ids.max() >= size):
                raise ValueError(
                    f"the unlabelled stream '{self.unlabelled.name}' yielded ids outside "
                    f"[0, {size}): {ids[(ids < 0) | (ids >= size)][:5].tolist()}."
                )
            batch = np.asarray(predict(x), np.float32)
            if probabilities is None:
                probabilities = np.zeros([size, batch.shape[1]], np.float32)
            probabilities[ids] = batch
            seen[ids] = True
        if not seen.all():
            logging.warning(
                "Pseudo-labels: the unlabelled stream '%s' yielded %d of its %d ids; the "
                "others stay without a pseudo-label.",
                self.unlabelled.name,
                int(seen.sum()),
                size,
            )
        if probabilities is None:
            probabilities = np.zeros([size, 0], np.float32)
        return probabilities, seen

    def _precision(self, labels, accepted) -> float:
        """Accuracy of the accepted pseudo-labels; 0 when unknown or none accepted."""
        true_labels = self.unlabelled.true_labels
        if true_labels is None or not accepted.any():
            return 0.0
        return float(np.mean(labels[accepted] == np.asarray(true_labels)[accepted]))
