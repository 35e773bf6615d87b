"""Estimating each source's label relation M_s (docs/algorithm.md, "Label adapters").

`estimate_label_relation` is the estimate, pure numpy, from examples x that
carry a target class distribution w(i | x) and a source label distribution
p(j | x):

    M_s[i, j] = (sum_x w(i | x) p(j | x) + a / C_s) / (sum_x w(i | x) + a)

(soft counts, `a` pseudo-examples spread uniformly over a row, so that a class
no example has gets a uniform row). Two ways to get them, after a warm-up in
which each such source trains a head of its own (so h_T learns without its
labels), `adapter_estimate`:

- "target_head": the source's examples, w = h_T's class probabilities, p = their
  source labels (one-hot): the share of the examples h_T takes for class i that
  the source labels j. The argmax of a row recovers a relabelling, its mass
  the noise level blurred by h_T's errors on the source's domain.
- "source_head": the labelled target examples (the trusted set), w = their
  target labels (one-hot), p = the source's own head's probabilities: the mean
  prediction of the source's head on the target images of class i (Hendrycks et
  al., NeurIPS 2018, "GLC"), blurred by that head's errors on the target domain.

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


def estimate_label_relation(target_classes, source_labels, smoothing: float = 1.0) -> np.ndarray:
    """[C_T, C_s] the relation estimate of the module docstring.

    Args:
        target_classes: [N, C_T] w(i | x), each example's target class distribution.
        source_labels: [N, C_s] p(j | x), its source label distribution.
        smoothing: `a`, the pseudo-examples of a uniform row.
    """
    weights = np.asarray(target_classes, np.float64)
    labels = np.asarray(source_labels, np.float64)
    counts = weights.T @ labels + smoothing / labels.shape[1]  # [C_T, C_s]
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
        trusted: the labelled target stream (for `estimate="source_head"`).
        estimate: "target_head" or "source_head" (module docstring).
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
        trusted: LabelledStream | None = None,
        estimate: str = "target_head",
        refresh_every: int = 0,
        batch_size: int = 256,
        max_examples: int = 5000,
        log_dir: str | None = None,
    ):
        super().__init__()
        self.sources = list(sources)
        self.trusted = trusted
        if estimate == "source_head" and trusted is None:  # (`ESTIMATES`: GradMixOptions)
            raise ValueError("estimate='source_head' needs the trusted labelled target stream.")
        self.estimate_from = estimate
        self.warmup_epochs = int(warmup_epochs)
        self.refresh_every = int(refresh_every)
        self.batch_size = int(batch_size)
        self.max_examples = int(max_examples)
        self.log_dir = log_dir
        self._writer = None
        self._predict_fns = {}

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
        for k, (stream, adapter_index) in enumerate(zip(self.sources, model.stream_adapters)):
            if adapter_index is None:
                continue
            adapter = model.label_adapters[adapter_index]
            if self.estimate_from == "target_head":  # h_T on the source's examples
                target_classes, labels = self._predict(model, 0, stream)
                source_labels = np.eye(adapter.num_source_classes)[labels]
            else:  # the source's own head on the labelled target examples
                source_labels, labels = self._predict(model, model.stream_heads[k], self.trusted)
                target_classes = np.eye(len(model.target_class_names))[labels]
            relation = estimate_label_relation(target_classes, source_labels)
            adapter.assign_relation(relation)
            logging.info(
                "Label relation of '%s' estimated from %d examples (%s): %d of %d matched "
                "rows off the class-name match.",
                stream.name,
                len(labels),
                self.estimate_from,
                argmax_mismatches(relation, adapter.matches),
                sum(i >= 0 for i in adapter.matches),
            )
        model.label_adapters_active.assign(1.0)

    def _predict(self, model, head: int, stream: LabelledStream):
        """The probabilities of head `head` on `stream`'s examples [N, C], and their labels."""
        if head not in self._predict_fns:
            self._predict_fns[head] = tf.function(
                lambda x: tf.nn.softmax(
                    tf.cast(model.heads[head](model.trunk(x, training=False)), tf.float32)
                ),
                reduce_retracing=True,
            )
        probabilities, labels = [], []
        dataset = stream.dataset.take(self.max_examples).batch(self.batch_size)
        for x, y in dataset.prefetch(tf.data.AUTOTUNE):
            probabilities.append(np.asarray(self._predict_fns[head](x), np.float32))
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
