"""What keeps a bad batch from reaching the model: non-finite checks and loss scaling.

`StepGuard` wraps the numerics around `GradMixModel.train_step`, so the step
itself reads as the algorithm:

- before any state changes, `nonfinite_streams` flags each stream (and the
  labelled target) whose loss or gradient is NaN or Inf, all-reduced so that
  every replica takes the same decision;
- `update_if_finite` then runs the step's update, or instead stops with an
  error naming the stream(s) and the step (`on_nonfinite="stop"`) or skips the
  batch and counts it (`"skip"`); XLA drops asserts, so a jit-compiled step
  always skips;
- under `mixed_float16` (a Keras `LossScaleOptimizer`) each stream's loss is
  scaled with the optimizer's own `scale_loss` and its gradients unscaled to
  float32 before the mixing weights are solved; a non-finite gradient with
  finite losses is a loss-scale overflow: the step is skipped and counted,
  and the scale halved, as the `LossScaleOptimizer` does. The decision is
  all-reduced here (the optimizer's own check reads one replica's local
  gradients).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from gradmix_tf import distribute

ON_NONFINITE = ("stop", "skip")


class StepGuard:
    """Non-finite checks and loss scaling for a training step.

    Args:
        optimizer: the optimizer the step applies (a `LossScaleOptimizer` under
            `mixed_float16`), or None before compiling (no loss scaling).
        skipped: the int64 variable counting the skipped batches.
        stream_names: the S stream names, for the stop's message.
        skips_nonfinite: skip a non-finite batch (`on_nonfinite="skip"`, or a
            jit-compiled step, where asserts are dropped); else stop.
    """

    def __init__(self, optimizer, skipped, stream_names, skips_nonfinite: bool):
        self.optimizer = optimizer
        self.skipped = skipped
        self.stream_names = tuple(stream_names)
        self.skips_nonfinite = bool(skips_nonfinite)

    # ---------------------------------------------------------- loss scaling
    def loss_scale_optimizer(self) -> keras.optimizers.LossScaleOptimizer | None:
        """The `LossScaleOptimizer` (`mixed_float16`), or None."""
        optimizer = self.optimizer
        return optimizer if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else None

    def scale_loss(self, loss):
        """The loss the backward pass starts from (`loss` itself without loss scaling)."""
        optimizer = self.loss_scale_optimizer()
        return loss if optimizer is None else optimizer.scale_loss(loss)

    def unscale(self, grads):
        """Gradients of a scaled loss -> float32 gradients of the loss."""
        optimizer = self.loss_scale_optimizer()
        if optimizer is None:
            return grads
        scale = tf.cast(optimizer.dynamic_scale, tf.float32)
        return [tf.cast(g, tf.float32) / scale for g in grads]

    def rescale(self, grads):
        """Unscaled gradients as the `LossScaleOptimizer` expects them (it unscales them
        again; the scale is a power of 2, so this is exact)."""
        optimizer = self.loss_scale_optimizer()
        if optimizer is None:
            return grads
        return [g * optimizer.dynamic_scale for g in grads]

    # ------------------------------------------------------------- checking
    def nonfinite_streams(self, losses, path_squares, head_grads):
        """[S + 1] bool: the streams (then the target) with a NaN/Inf loss or gradient.

        Args:
            losses: S + 1 losses (the streams', then the target's).
            path_squares: [S + 1] each one's squared gradient norm on the target's
                path (global: NaN or Inf on any replica propagates into it).
            head_grads: S lists of the streams' gradients on their own heads.

        One `is_finite` on each loss and on each stream's summed squared
        gradient (NaN and Inf propagate into the sum; a sum that overflows
        float32 would break the mixing and the optimizer's state as well).
        Under loss scaling only the losses: the gradients are checked by
        `update_if_finite` as a loss-scale overflow.
        """
        finite = tf.math.is_finite(tf.stack(losses))
        if self.loss_scale_optimizer() is None:
            head_squares = [
                tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, tf.float32))) for g in grads])
                if grads
                else tf.constant(0.0)
                for grads in head_grads
            ]
            squares = path_squares + tf.stack([*head_squares, tf.constant(0.0)])
            finite &= tf.math.is_finite(squares)
        nonfinite = tf.cast(tf.logical_not(finite), tf.float32)
        return distribute.all_reduce_sum([nonfinite])[0] > 0.0

    def _overflow(self, grads):
        """Whether a gradient overflowed under loss scaling (all replicas); None without."""
        if self.loss_scale_optimizer() is None:
            return None
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        return distribute.all_reduce_sum([tf.cast(tf.logical_not(finite), tf.float32)])[0] > 0.0

    # ------------------------------------------------------------- updating
    def update_if_finite(self, nonfinite, update, update_args, grads):
        """`update(*update_args)` unless a stream is flagged or `grads` overflowed.

        Args:
            nonfinite: [S + 1] bool from `nonfinite_streams` (all-reduced).
            update: the step's state changes (run on every replica).
            update_args: its arguments.
            grads: the gradients the update applies (checked for a loss-scale
                overflow under `mixed_float16`).
        """
        overflow = self._overflow(grads)
        if overflow is None and not self.skips_nonfinite and not distribute.merges_updates():
            # Stop: the update runs after an assert that stops the step first (a `tf.cond`
            # around the optimizer step, which skipping needs, is slower to trace).
            with tf.control_dependencies([self._stop_if(tf.reduce_any(nonfinite), nonfinite)]):
                update(*update_args)
            return
        if overflow is None:
            distribute.replica_cond(
                tf.reduce_any(nonfinite), self._on_nonfinite, update, (nonfinite,), update_args
            )
            return

        def skip(nonfinite):
            tf.cond(
                tf.reduce_any(nonfinite),
                lambda: self._on_nonfinite(nonfinite),
                self._lower_the_loss_scale,
            )

        distribute.replica_cond(
            tf.reduce_any(nonfinite) | overflow, skip, update, (nonfinite,), update_args
        )

    def _lower_the_loss_scale(self):
        optimizer = self.loss_scale_optimizer()
        optimizer.step_counter.assign(0)
        optimizer.dynamic_scale.assign(optimizer.dynamic_scale * 0.5)
        self.skipped.assign_add(1)

    def _on_nonfinite(self, nonfinite):
        """Counts a skipped batch, or stops the run saying where and what to do."""
        if self.skips_nonfinite:
            self.skipped.assign_add(1)
            return
        self._stop_if(tf.constant(True), nonfinite)

    def _stop_if(self, stops, nonfinite):
        """An assert that stops the step when `stops`, naming the non-finite streams."""
        streams = tf.boolean_mask(tf.constant(self.stream_names + ("target",)), nonfinite)
        message = tf.strings.join(
            [
                "Non-finite (NaN or Inf) loss or gradient in stream(s) ",
                tf.strings.reduce_join(streams, separator=", "),
                " at training step ",
                tf.strings.as_string(self.optimizer.iterations + 1),
                " (1-based: optimizer.iterations + 1); nothing was updated. Lower the "
                "learning rate, check the data of that stream for NaN/Inf values, or "
                "build GradMixModel with on_nonfinite=skip to skip such batches.",
            ]
        )
        return tf.debugging.Assert(tf.logical_not(stops), [message])
