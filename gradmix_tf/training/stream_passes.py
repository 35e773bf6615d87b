"""Steps 2, 3 and 5 of a GradMix step: the streams' gradients, kept, recomputed or from one pass.

A GradMix step needs every stream's gradient twice: for the products the
mixing rule reads (step 4), then for the mixed gradient (step 5). How they
are held between the two is `GradMixOptions.gradient_memory`:

- "store" (the default): every stream's gradient is kept, K + 1 copies of the
  target's path (plus the mixed gradient).
- "recompute": the streams' passes run one after another, each stream's
  gradient is reduced to its products with g_T and dropped; step 5 takes each
  stream's gradient again (a second forward and backward pass that starts from
  the non-trainable state its first pass started from, so it repeats that pass:
  the same batch statistics, dropout masks and state updates, ending in the
  state the first passes left) and adds it to the mixed gradient at once. At most three copies are held
  (g_T, G and one stream's gradient), whatever K, for about one more
  forward/backward pass a source stream. It serves the rules that read only
  the products (every rule but "pcgrad" and "lookahead", which read
  the gradients themselves).

- "one_pass": one forward and one backward pass over the streams' batches
  concatenated give every stream's gradient, each layer's weight gradient
  split by stream (`training.one_pass`), stacked a variable ([S + 1, ...])
  and kept, as "store" keeps them; the fastest. It serves every rule.

"store" and "recompute" give the same step (tests/test_stream_passes.py);
"one_pass" gives it too, batch normalisation in training mode included (each
stream's rows normalised on their own), where no dropout draws masks
(tests/test_one_pass.py).
docs/RESULTS.md has their time and peak memory.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import tensorflow as tf

from gradmix_tf import distribute
from gradmix_tf.mixing import weights
from gradmix_tf.mixing.stream_gradients import (
    StackedStreamGradients,
    StreamGradients,
    StreamProducts,
)
from gradmix_tf.training.one_pass import JointPass

GRADIENT_MEMORY = ("store", "recompute", "one_pass")


@dataclasses.dataclass(frozen=True)
class StepGradients:
    """What steps 2-3 give a step (a new object every step and replica: under a
    `MirroredStrategy` the replicas trace the step at once, so nothing of a step is kept
    on the shared passes object).

    Attributes:
        losses: S stream losses.
        head_grads: S lists of each stream's gradients on its own head.
        target_loss: the labelled target loss.
        gradients: the global `StreamGradients` (products taken once).
        mix: step 5, `mix(mixing_weights [S, L], target_weight)` -> the local mixed
            gradient G [V] on the target's path.
    """

    losses: list
    head_grads: list
    target_loss: tf.Tensor
    gradients: StreamGradients
    mix: Callable


class StreamPasses:
    """How a step takes its streams' gradients (`run`: steps 2-3 on a step's
    `StepContext`, giving the step's `StepGradients`, whose `mix` is step 5)."""

    def run(self, step, streams, target) -> StepGradients:
        raise NotImplementedError


class StoredPasses(StreamPasses):
    """Every stream's gradient kept from step 2 to step 5."""

    def run(self, step, streams, target) -> StepGradients:
        """Steps 2-3, each stream's gradient kept for step 5."""
        results = [step.stream_gradients(stream) for stream in streams]
        losses, path_grads, head_grads = ([r[i] for r in results] for i in range(3))
        target_loss, target_grads, _ = step.stream_gradients(target)
        gradients = StreamGradients(
            [distribute.all_reduce_sum(g) for g in path_grads],
            distribute.all_reduce_sum(target_grads),
            step.mixing_layer_ids,
            step.num_mixing_layers,
        )
        mix = functools.partial(self.mix, step.mixing_layer_ids, path_grads, target_grads)
        return StepGradients(losses, head_grads, target_loss, gradients, mix)

    def mix(self, layer_ids, path_grads, target_grads, mixing_weights, target_weight):
        """Step 5: the local mixed gradient G [V] on the target's path."""
        return weights.mix_gradients(
            path_grads, mixing_weights, layer_ids, target_grads, target_weight
        )


class OnePassPasses(StoredPasses):
    """Every stream's gradient from one pass over the joint batch (`training.one_pass`),
    stacked a variable ([S + 1, ...]: the streams, then the target) and kept for step 5;
    one pass a stream (`StoredPasses`) where the model cannot take one pass."""

    def __init__(self):
        self.joint_pass = None

    def run(self, step, streams, target) -> StepGradients:
        if self.joint_pass is None or self.joint_pass.network is not step.network:
            self.joint_pass = JointPass(step.network)  # its plan made once a network
        result = self.joint_pass.gradients([*streams, target], step.guard)
        if result is None:
            return super().run(step, streams, target)
        shapes = [v.shape for v in step.network.path_variables]
        gradients = StackedStreamGradients(
            distribute.all_reduce_sum(result.stacked_grads),
            shapes,
            step.mixing_layer_ids,
            step.num_mixing_layers,
        )
        mix = functools.partial(  # the local gradients: the optimizer all-reduces the mix
            weights.mix_stacked_gradients,
            result.stacked_grads,
            shapes,
            layer_ids=step.mixing_layer_ids,
        )
        losses = list(result.losses)
        return StepGradients(losses[:-1], result.own_grads[:-1], losses[-1], gradients, mix)


class RecomputedPasses(StreamPasses):
    """Each stream's gradient reduced to its products, then taken again for the mix."""

    def run(self, step, streams, target) -> StepGradients:
        """Steps 2-3, one stream at a time (see the module's docstring)."""
        target_loss, target_grads, _ = step.stream_gradients(target)
        global_target = distribute.all_reduce_sum(target_grads)
        target_sq = tf.stack([tf.reduce_sum(tf.square(t)) for t in global_target])
        losses, head_grads, dots, stream_sq, states = [], [], [], [], []
        previous = [target_sq]
        for stream in streams:
            with tf.control_dependencies(previous):  # one stream's gradient alive at a time
                states.append(step.network.layer_states(stream.head))
                loss, path_grads, own_grads = step.stream_gradients(stream)
            global_path = distribute.all_reduce_sum(path_grads)
            dots.append(
                tf.stack([tf.reduce_sum(t * g) for t, g in zip(global_target, global_path)])
            )
            stream_sq.append(tf.stack([tf.reduce_sum(tf.square(g)) for g in global_path]))
            losses.append(loss)
            head_grads.append(own_grads)
            previous = [dots[-1], stream_sq[-1]]
        empty = tf.zeros([0, len(target_grads)])
        products = (
            tf.stack(dots) if dots else empty,
            target_sq,
            tf.stack(stream_sq) if stream_sq else empty,
        )
        gradients = StreamProducts(products, step.mixing_layer_ids, step.num_mixing_layers)
        mix = functools.partial(self.mix, step, streams, states, target_grads)
        return StepGradients(losses, head_grads, target_loss, gradients, mix)

    def mix(self, step, streams, states, target_grads, mixing_weights, target_weight):
        """Step 5: G = lambda_T g_T + sum_s w[s, l] g_s, each g_s taken again and added."""
        mixed = [target_weight * g for g in target_grads]
        for s, (stream, state) in enumerate(zip(streams, states)):
            with tf.control_dependencies(mixed):  # after the previous stream is added
                _, path_grads, _ = step.stream_gradients(stream, state)
            mixed = [
                m + tf.cast(mixing_weights[s, layer], g.dtype) * g
                for m, g, layer in zip(mixed, path_grads, step.mixing_layer_ids)
            ]
        return mixed


def make_stream_passes(gradient_memory: str) -> StreamPasses:
    """The passes `gradient_memory` names (checked by `GradMixOptions`)."""
    kinds = {"store": StoredPasses, "recompute": RecomputedPasses, "one_pass": OnePassPasses}
    return kinds[gradient_memory]()
