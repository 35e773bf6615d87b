"""TensorBoard summaries and a saved history of the mixing weights w [S, L].

`MixingWeightsLogger` shows which stream helped which layer, and when: every N
steps it writes the streams x layers matrix as a heat map image, a histogram
per stream and one scalar per (stream, layer), and it keeps the matrices so
`history_path` (.npz) can be plotted after training. `render_mixing_weights`
draws the heat map.

The summaries are written with `tf.summary.write` and the TensorBoard plugin
metadata (scalars, histograms, images), so they need no `tensorboard` package
at training time.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import keras
import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorflow.core.framework import summary_pb2

IMAGE_TAG = "mixing_weights"
HISTOGRAM_TAG = "mixing_weights/{stream}"
SCALAR_TAG = "mixing_weight/{stream}/{layer}"


def short_layer_names(layer_names) -> list[str]:
    """Drops the path components all names share (e.g. "gradmix/"), keeping the last."""
    parts = [str(name).split("/") for name in layer_names]
    if not parts:
        return []
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return ["/".join(p[common:]) for p in parts]


@contextlib.contextmanager
def quiet_missing_glyphs():
    """Drops matplotlib's warning for each character its fonts lack (a stream or class
    named in Chinese, Japanese or Korean): the plot shows a box for it, and a dozen
    warnings would bury the run's own output. A function decorated with it draws quietly."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"Glyph \d+ .* missing from", category=UserWarning
        )
        yield


@quiet_missing_glyphs()
def render_mixing_weights(weights, stream_names, layer_names, title=None) -> np.ndarray:
    """Draws w [S, L] as an annotated heat map (streams down, layers across).

    The colour scale is fixed to [0, max(1, max weight)] so images of
    different steps compare. Layer names are shortened by `short_layer_names`.

    Args:
        weights: `[S, L]` mixing weights.
        stream_names: `S` names (y axis).
        layer_names: `L` names (x axis).
        title: optional figure title.

    Returns:
        uint8 `[H, W, 4]` RGBA pixels.
    """
    weights = np.asarray(weights, dtype=np.float32).reshape(len(stream_names), len(layer_names))
    num_streams, num_layers = weights.shape
    vmax = max(1.0, float(weights.max())) if weights.size else 1.0
    figure = Figure(
        figsize=(2.5 + 0.9 * max(num_layers, 1), 1.6 + 0.5 * max(num_streams, 1)), dpi=100
    )
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if weights.size:
        image = axes.imshow(weights, cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto")
        figure.colorbar(image, ax=axes)
        for s in range(num_streams):
            for l in range(num_layers):  # noqa: E741
                value = weights[s, l]
                colour = "black" if value > 0.6 * vmax else "white"
                axes.text(l, s, f"{value:.2f}", ha="center", va="center", color=colour, size=8)
    else:
        axes.text(0.5, 0.5, "no streams", ha="center", va="center", transform=axes.transAxes)
    axes.set_yticks(range(num_streams), [str(s) for s in stream_names])
    axes.set_xticks(
        range(num_layers), short_layer_names(layer_names), rotation=45, ha="right", size=8
    )
    axes.set_xlabel("layer")
    axes.set_ylabel("stream")
    if title:
        axes.set_title(title)
    figure.tight_layout()
    canvas.draw()
    return np.array(canvas.buffer_rgba(), dtype=np.uint8)


def _metadata(plugin_name: str, data_class: int) -> summary_pb2.SummaryMetadata:
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin_name),
        data_class=data_class,
    )


_SCALAR = _metadata("scalars", summary_pb2.DATA_CLASS_SCALAR)
_HISTOGRAM = _metadata("histograms", summary_pb2.DATA_CLASS_TENSOR)
_IMAGE = _metadata("images", summary_pb2.DATA_CLASS_BLOB_SEQUENCE)


def _write_image(tag: str, pixels: np.ndarray, step: int):
    """An image summary: `[width, height, png]` strings, as `tf.summary.image` writes."""
    height, width = pixels.shape[:2]
    tensor = tf.stack([tf.as_string(width), tf.as_string(height), tf.io.encode_png(pixels)])
    tf.summary.write(tag, tensor, step=step, metadata=_IMAGE)


def _write_histogram(tag: str, values: np.ndarray, step: int, bins: int = 30):
    """A histogram summary: float64 `[k, 3]` rows of (left edge, right edge, count)."""
    values = np.asarray(values, np.float64).ravel()
    if values.size == 0:
        buckets = np.zeros([0, 3])
    elif values.min() == values.max():
        buckets = np.array([[values.min() - 0.5, values.max() + 0.5, values.size]])
    else:
        counts, edges = np.histogram(values, bins=min(bins, values.size))
        buckets = np.stack([edges[:-1], edges[1:], counts], axis=1)
    tf.summary.write(tag, tf.constant(buckets, tf.float64), step=step, metadata=_HISTOGRAM)


def _write_scalar(tag: str, value: float, step: int):
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=_SCALAR)


class MixingWeightsLogger(keras.callbacks.Callback):
    """Writes the mixing weights w [S, L] to TensorBoard and keeps their history.

    Every `every_n_steps` optimizer steps (checked after each train batch; the
    step is `model.optimizer.iterations`) it reads `model.mixing_weights` and
    writes to `log_dir`:

    - `mixing_weights`: the streams x layers matrix as a heat map image
      (`render_mixing_weights`);
    - `mixing_weights/<stream>`: a histogram of the stream's weights over layers;
    - `mixing_weight/<stream>/<layer>`: one scalar per (stream, layer), with
      short layer names (the common prefix such as "gradmix/" dropped).

    It also keeps every logged matrix; with `history_path` the history is saved
    at each epoch end and at the end of training as an .npz with `steps` [T],
    `weights` [T, S, L], `stream_names` [S] and `layer_names` [L] (full names).
    The history is kept across `fit` calls of the same callback.

    Under multi-worker training give each worker its own `log_dir` and
    `history_path` (or add the callback to the chief only).

    Args:
        log_dir: TensorBoard run directory.
        every_n_steps: steps between two summaries.
        history_path: where to save the .npz history; None keeps it in memory
            only (`steps`, `weights`).

    Example:

    >>> logger = MixingWeightsLogger("/tmp/run/mixing", every_n_steps=50,
    ...                              history_path="/tmp/run/mixing_weights.npz")
    >>> model.fit(data.train_dataset(64, seed=0), steps_per_epoch=100, callbacks=[logger])
    """

    def __init__(self, log_dir: str, every_n_steps: int = 100, history_path: str | None = None):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}.")
        self.log_dir = str(log_dir)
        self.every_n_steps = int(every_n_steps)
        self.history_path = None if history_path is None else str(history_path)
        self.steps: list[int] = []
        self.weights: list[np.ndarray] = []
        self._writer = None
        self._last_period = 0

    def get_config(self) -> dict:
        return {
            "log_dir": self.log_dir,
            "every_n_steps": self.every_n_steps,
            "history_path": self.history_path,
        }

    def on_train_begin(self, logs=None):
        if not hasattr(self.model, "mixing_weights"):
            raise ValueError(
                "MixingWeightsLogger needs a built GradMixModel (with `mixing_weights`): "
                "call model.build(input_shape) before fit."
            )
        self._writer = tf.summary.create_file_writer(self.log_dir)
        self._last_period = self._step() // self.every_n_steps

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        # A period index, not `step % n == 0`: steps_per_execution > 1 skips steps.
        if step // self.every_n_steps > self._last_period:
            self._last_period = step // self.every_n_steps
            self.log(step)

    def on_epoch_end(self, epoch, logs=None):
        self.save_history()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.save_history()

    def log(self, step: int):
        """Writes the current mixing weights at `step` and appends them to the history."""
        weights = np.asarray(self.model.mixing_weights.numpy(), np.float32)  # [S, L]
        self.steps.append(int(step))
        self.weights.append(weights)
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        streams = list(self.model.stream_names)
        layers = list(self.model.mixing_layer_names)
        short = short_layer_names(layers)
        with self._writer.as_default():
            title = f"mixing weights, step {step}"
            _write_image(IMAGE_TAG, render_mixing_weights(weights, streams, layers, title), step)
            for s, stream in enumerate(streams):
                _write_histogram(HISTOGRAM_TAG.format(stream=stream), weights[s], step)
                for l, layer in enumerate(short):  # noqa: E741
                    _write_scalar(
                        SCALAR_TAG.format(stream=stream, layer=layer), weights[s, l], step
                    )
        self._writer.flush()

    def save_history(self):
        """Saves the history to `history_path` (atomically), when set."""
        if self.history_path is None:
            return
        directory = os.path.dirname(self.history_path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        streams = list(self.model.stream_names)
        layers = list(self.model.mixing_layer_names)
        weights = (
            np.stack(self.weights) if self.weights else np.zeros([0, len(streams), len(layers)])
        )
        partial = self.history_path + ".partial"
        with open(partial, "wb") as file:
            np.savez(
                file,
                steps=np.asarray(self.steps, np.int64),
                weights=weights.astype(np.float32),
                stream_names=np.asarray(streams, dtype=str),
                layer_names=np.asarray(layers, dtype=str),
            )
        os.replace(partial, self.history_path)

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())
