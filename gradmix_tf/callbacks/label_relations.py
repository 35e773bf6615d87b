"""Estimating each source's label relation M_s (docs/algorithm.md, "Label adapters").

`estimate_label_relation` is the estimate, pure numpy: with h_T's class
probabilities q(i | x) on a source's examples and their source labels y,

    M_s[i, j] = (sum_x q(i | x) [y_x = j] + a / C_s) / (sum_x q(i | x) + a)

the share of the examples h_T takes for target class i that the source labels
j (soft counts, `a` pseudo-examples spread uniformly over a row, so that a
class h_T never predicts gets a uniform row). With h_T trained without the
source's labels (a head of its own for the source during the warm-up), the
argmax of each row recovers a relabelling, and the row's mass on it the
source's noise level, blurred by h_T's own errors (docs/RESULTS.md).

`LabelRelationEstimator` is the Keras callback: at the end of the warm-up
(`adapter_warmup_epochs`) it estimates every label adapter's relation, sets
it and switches the adapters on (`GradMixModel.label_adapters_active`), and
estimates again every `adapter_refresh_every` epochs if asked. It logs each
relation (and how many rows' argmax differ from the class-name match) to
TensorBoard.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gradmix_tf.data.streams import LabelledStream


def estimate_label_relation(
    target_probabilities, labels, num_source_classes: int, smoothing: float = 1.0
) -> np.ndarray:
    """[C_T, C_s] the relation estimate of the module docstring.

    Args:
        target_probabilities: [N, C_T] h_T's class probabilities on the source's examples.
        labels: [N] their source labels, in [0, num_source_classes).
        smoothing: `a`, the pseudo-examples of a uniform row.
    """
    probabilities = np.asarray(target_probabilities, np.float64)
    labels = np.asarray(labels, np.int64)
    one_hot = np.eye(num_source_classes)[labels]  # [N, C_s]
    counts = probabilities.T @ one_hot  # [C_T, C_s]
    counts += smoothing / num_source_classes
    return counts / counts.sum(axis=1, keepdims=True)


def argmax_mismatches(relation, matches) -> int:
    """How many matched target classes' rows have their argmax off the class-name match."""
    relation = np.asarray(relation)
    return int(sum(relation[i].argmax() != j for j, i in enumerate(matches) if i >= 0))


def save_relation_heatmap(relation, target_class_names, source_class_names, path, title=None):
    """Writes M_s [C_T, C_s] as an annotated heat map PNG (target classes down)."""
    relation = np.asarray(relation, np.float32)
    rows, cols = relation.shape
    figure = Figure(figsize=(1.8 + 0.5 * cols, 1.2 + 0.4 * rows), dpi=100)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(relation, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    figure.colorbar(image, ax=axes)
    for i in range(rows):
        for j in range(cols):
            colour = "black" if relation[i, j] > 0.6 else "white"
            axes.text(j, i, f"{relation[i, j]:.2f}", ha="center", va="center", color=colour, size=7)
    axes.set_yticks(range(rows), [str(c) for c in target_class_names], size=8)
    axes.set_xticks(range(cols), [str(c) for c in source_class_names], size=8, rotation=45)
    axes.set_ylabel("target class")
    axes.set_xlabel("source label")
    if title:
        axes.set_title(title, size=9)
    figure.tight_layout()
    canvas.print_png(path)


class LabelRelationEstimator(keras.callbacks.Callback):
    """Estimates the label adapters' relations after a warm-up, then every few epochs.

    Args:
        sources: the model's source streams (in stream order); those with a label
            adapter are read.
        warmup_epochs: the epochs before the first estimate (0: never estimate).
        refresh_every: estimate again every this many epochs after it (0: never).
        batch_size: inference batch size.
        max_examples: at most this many examples of a source are read.
        log_dir: TensorBoard directory for the relations (None: not logged).
    """

    def __init__(
        self,
        sources: list[LabelledStream],
        warmup_epochs: int,
        refresh_every: int = 0,
        batch_size: int = 256,
        max_examples: int = 5000,
        log_dir: str | None = None,
    ):
        super().__init__()
        self.sources = list(sources)
        self.warmup_epochs = int(warmup_epochs)
        self.refresh_every = int(refresh_every)
        self.batch_size = int(batch_size)
        self.max_examples = int(max_examples)
        self.log_dir = log_dir
        self._writer = None
        self._predict_fn = None

    def estimates_after(self, epoch: int) -> bool:
        """Whether the end of (0-based) `epoch` estimates the relations."""
        done = epoch + 1
        if not self.warmup_epochs or done < self.warmup_epochs:
            return False
        if done == self.warmup_epochs:
            return True
        return bool(self.refresh_every) and (done - self.warmup_epochs) % self.refresh_every == 0

    def on_epoch_end(self, epoch, logs=None):
        if not self.model.label_adapters or not self.estimates_after(epoch):
            return
        self.estimate(self.model)
        self.log_relations(self.model, self._step(epoch))

    def estimate(self, model):
        """Sets every adapter's relation from h_T's predictions, and switches them on."""
        for stream, adapter_index in zip(self.sources, model.stream_adapters):
            if adapter_index is None:
                continue
            adapter = model.label_adapters[adapter_index]
            probabilities, labels = self._predict(model, stream)
            relation = estimate_label_relation(probabilities, labels, adapter.num_source_classes)
            adapter.assign_relation(relation)
            logging.info(
                "Label relation of '%s' estimated from %d examples: %d of %d matched rows "
                "off the class-name match.",
                stream.name,
                len(labels),
                argmax_mismatches(relation, adapter.matches),
                sum(i >= 0 for i in adapter.matches),
            )
        model.label_adapters_active.assign(1.0)

    def _predict(self, model, stream: LabelledStream):
        if self._predict_fn is None:
            self._predict_fn = tf.function(
                lambda x: model(x, training=False), reduce_retracing=True
            )
        probabilities, labels = [], []
        dataset = stream.dataset.take(self.max_examples).batch(self.batch_size)
        for x, y in dataset.prefetch(tf.data.AUTOTUNE):
            probabilities.append(np.asarray(self._predict_fn(x), np.float32))
            labels.append(y.numpy())
        return np.concatenate(probabilities), np.concatenate(labels)

    def _step(self, epoch: int) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def log_relations(self, model, step: int):
        """Each adapter's relation (an image) and its argmax mismatches (a scalar)."""
        if self.log_dir is None:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        names = [s.name for s, a in zip(self.sources, model.stream_adapters) if a is not None]
        with self._writer.as_default():
            for name, adapter in zip(names, model.label_adapters):
                relation = adapter.relation()
                tf.summary.image(f"label_relation/{name}", relation[None, :, :, None], step=step)
                tf.summary.scalar(
                    f"label_relation/{name}/argmax_mismatches",
                    argmax_mismatches(relation, adapter.matches),
                    step=step,
                )
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self.model.label_adapters:
            self.log_relations(self.model, self._step(0))
        if self._writer is not None:
            self._writer.close()
            self._writer = None
