"""The interface of a mixing rule (step 4 of the algorithm), and the rule registry.

A mixing rule decides, at every step, how much of each stream's gradient goes
into the mixed gradient (docs/algorithm.md, "Mixing rules"). `GradMixModel`
makes its rule once from its options (`make_rule`) and calls it twice per
step, with the step's `training.step_context.StepContext` (`step`: the network
and each stream's gradients, the mixing layers, the optimizer's learning rate
and step), never with the model:

1. `prepare_streams(step, streams, target)`: optional; may reweight the
   examples of the stream batches before their gradients are taken (example
   reweighting does);
2. `mix(step, streams, target, gradients)`: the `Mix` of the step: the
   weights w [S, L] of the streams on the target's path and lambda_T, from
   the global (all-reduced) gradients (`mixing.stream_gradients.
   StreamGradients`: the gradients, and their products taken once).

A rule whose weights persist across steps creates its state in
`build(add_weight, num_streams, num_layers)` (model weights made by `add_weight`,
so checkpoints hold them), returns the new state in `Mix.state`, and stores it
in `assign_state`, which the model calls with the optimizer step, so a skipped
(non-finite) batch leaves it unchanged. A rule that reads the streams' gradients
themselves, not only their products, says so (`reads_gradients`).

The maths of a rule lives in `gradmix_tf.mixing` as pure tensor functions; a
rule object only wires it to the step. To add a rule: a module in this
package with a `MixingRule` subclass decorated with `@register_rule("name")`,
imported in `gradmix_tf/rules/__init__.py`, and a method in
`gradmix_tf.experiment.METHODS` if the launchers should offer it.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

RULES: dict[str, type[MixingRule]] = {}


@dataclasses.dataclass(frozen=True)
class StreamBatch:
    """One stream's mini-batch in a training step.

    Attributes:
        x: [B, ...] inputs.
        labels: [B] int label ids in the stream's head.
        head: the index of the stream's head in `GradMixModel.heads` (0: h_T).
        example_weights: [B] per-example loss weights, or None (the plain mean).
        accepted: [B] 1 for examples that count, 0 for the rest; with
            `example_weights` the loss is the weighted sum over the global
            count of accepted examples (pseudo-labels). Without it, the
            weights already sum to 1 over the global batch (example reweighting).
        stream_weight: a weight of the whole stream set by a rule's
            `prepare_streams`, or None.
        adapter: the index of the stream's label adapter in
            `GradMixModel.label_adapters` (it predicts through h_T), or None.
    """

    x: tf.Tensor
    labels: tf.Tensor
    head: int = 0
    example_weights: tf.Tensor | None = None
    accepted: tf.Tensor | None = None
    stream_weight: tf.Tensor | None = None
    adapter: int | None = None


@dataclasses.dataclass(frozen=True)
class Mix:
    """What a rule decides for one step.

    Attributes:
        weights: [S, L] the mixing weights of the streams on the target's path.
        target_weight: lambda_T of this step, the labelled target's weight.
        source_head_scale: a factor on the source heads' own gradients, or
            None (they train as they are).
        state: the rule's new state (tensors), stored by `assign_state` with
            the step's update, so only when the step is applied.
    """

    weights: tf.Tensor
    target_weight: tf.Tensor | float
    source_head_scale: tf.Tensor | float | None = None
    state: tuple = ()


class MixingRule:
    """How the streams' gradients are weighted in the mixed gradient.

    Args:
        options: the model's `GradMixOptions`.
    """

    reads_gradients = False
    """Whether `mix` reads the streams' gradients themselves, not only their products
    with the target's (`gradient_memory="recompute"` keeps only the products)."""

    def __init__(self, options):
        self.options = options

    def build(self, add_weight, num_streams: int, num_layers: int):
        """Creates the rule's state, if it has any, as non-trainable model weights made
        by `add_weight` (Keras's `Layer.add_weight`, so that checkpoints and replicas hold
        it), for S = `num_streams` streams and L = `num_layers` mixing layers; called by
        `GradMixModel.build`."""
        del add_weight, num_streams, num_layers

    def assign_state(self, state: tuple):
        """Stores `Mix.state` (called inside the step's update; default: no state)."""
        del state

    def prepare_streams(self, step, streams: list[StreamBatch], target: StreamBatch):
        """The stream batches the gradients are taken on (default: as they are)."""
        del step, target
        return streams

    def mix(self, step, streams, target, gradients) -> Mix:
        """The step's `Mix`: no stream, or the rule's `stream_mix`.

        Args:
            step: the step's `StepContext` (`num_mixing_layers`, `mixing_layer_ids`,
                `stream_gradients`, ...).
            streams: the S `StreamBatch`es of the step.
            target: the labelled target's `StreamBatch`.
            gradients: the S streams' and the target's global gradients on the
                target's path (`mixing.stream_gradients.StreamGradients`).
        """
        if not streams:
            return Mix(tf.zeros([0, step.num_mixing_layers]), self.options.target_weight)
        return self.stream_mix(step, streams, target, gradients)

    def stream_mix(self, step, streams, target, gradients) -> Mix:
        """`mix` for at least one stream."""
        raise NotImplementedError


def weight_total(options, num_streams: int) -> float:
    """The sum each layer's weights are normalised to (`options.weight_total`: a number,
    or "num_streams" for S)."""
    return num_streams if options.weight_total == "num_streams" else options.weight_total


def register_rule(name: str):
    """Class decorator: makes a `MixingRule` selectable as `step.rule=name`."""

    def register(cls):
        if name in RULES:
            raise ValueError(f"a mixing rule {name!r} is registered already: {RULES[name]}.")
        cls.name = name
        RULES[name] = cls
        return cls

    return register


def make_rule(options) -> MixingRule:
    """The rule `options.rule` names (checked by `GradMixOptions`), made for these options."""
    return RULES[options.rule](options)
