"""Every stream's gradient from one forward and one backward pass (`gradient_memory="one_pass"`).

The streams' batches (the K sources, P, then the labelled target) are concatenated and
go through the trunk in one forward pass; each stream's features then go through its
own head and loss, as in its own pass. One backward pass of the sum of the streams'
losses gives, at every layer that owns trainable variables, the gradient at its output;
each stream's weight gradient is then the sum over its own rows
(`training.layer_gradients`: a formula for Dense, convolutions, depthwise convolutions,
batch and layer normalisation and embeddings, a vector-Jacobian product of the layer on
the stream's rows for any other layer). The pass's tape watches only what that needs
(the tensors the rules read gradients at, the label adapters, the generic rule's
layers' variables), so the backward pass takes no weight gradient of its own.

The gradients equal those of one pass a stream wherever no layer mixes the rows of
different streams. Batch normalisation in training mode does not: it runs on each
stream's rows on its own, with their own batch's moments, and updates its moving
statistics once a stream, in the streams' order, as one pass a stream does
(`layer_gradients.BatchNormalizationRule`; normalising over the joint batch instead, as
joint training does, lowered the default's target accuracy by 0.075 on a development task:
docs/RESULTS.md). Dropout draws its masks for the joint batch. A label adapter serves
one stream: its gradient is taken as it is.

A layer is recorded by replacing its `call` for the pass, under a lock (replicas trace
their steps in threads of their own; a thread that does not record calls the layer as it
is). `JointPass.plan` finds the layers that own the model's trainable variables once and
says which take the generic rule; a model whose variables it cannot attribute to a layer,
a step whose streams' inputs differ in shape, or a pass it cannot record, is trained with
one pass a stream instead (logged).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading

import tensorflow as tf
from absl import logging

from gradmix_tf import distribute
from gradmix_tf.training.layer_gradients import (
    LayerCall,
    UnsupportedCall,
    VectorJacobianRule,
    owned_variables,
    rule_for,
    split_rows,
)
from gradmix_tf.training.step_context import scaled_mean

_RECORDING = threading.local()
_INSTALL_LOCK = threading.Lock()
_FALLBACK = "gradient_memory='one_pass': %s; the step takes one pass a stream."


def _unlike_inputs(batches) -> str | None:
    """Why the batches cannot be concatenated (inputs of different shapes), or None."""
    shapes = {tuple(b.x.shape[1:]) for b in batches}
    return f"the streams' inputs differ in shape: {sorted(shapes)}" if len(shapes) > 1 else None


def _by_batch(calls, output_grads, num_batches: int):
    """Each variable's flat gradients from the recorded calls: ({id: [[batches, n]]} from the
    calls on every batch, {id: {batch: [gradients]}} from the calls on some)."""
    whole, parts = {}, {}
    every_batch = tuple(range(num_batches))
    for call, output_grad in zip(calls, output_grads):
        for key, stacked in call.rule.gradients(call, output_grad).items():
            if call.segments == every_batch:
                whole.setdefault(key, []).append(stacked)
                continue
            for segment, grad in zip(call.segments, tf.unstack(stacked, len(call.segments))):
                parts.setdefault(key, {}).setdefault(segment, []).append(grad)
    return whole, parts


class Recorder:
    """The layer calls of one recorded pass (`calls`), and the batches (`segments`, with
    their sizes) whose rows the next calls' inputs hold."""

    def __init__(self, rules: dict, tape: tf.GradientTape):
        self.rules = rules  # id(layer) -> LayerRule
        self.tape = tape
        self.calls: list[LayerCall] = []
        self.segments: tuple = ()
        self.sizes: tuple = ()

    def record(self, layer, original, args, kwargs):
        record = LayerCall(layer, self.rules[id(layer)], self.segments, self.sizes, self.tape)
        self.calls.append(record)
        return record.rule.call(layer, record, original, args, kwargs)


def _recorded_call(layer, original):
    def call(*args, **kwargs):
        recorder = getattr(_RECORDING, "recorder", None)
        if recorder is None:
            return original(*args, **kwargs)
        return recorder.record(layer, original, args, kwargs)

    return call


@contextlib.contextmanager
def recording(layers, rules: dict, tape: tf.GradientTape):
    """Records the calls of `layers` in this thread (a `Recorder`) while open, the
    tensors whose gradients their rules need watched by `tape`."""
    recorder = Recorder(rules, tape)
    with _INSTALL_LOCK:
        for layer in layers:
            vars(layer)["call"] = _recorded_call(layer, layer.call)
        _RECORDING.recorder = recorder
        try:
            yield recorder
        finally:
            _RECORDING.recorder = None
            for layer in layers:
                vars(layer).pop("call", None)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The layers a one-pass step records (`layers`, their `rules` by id), the layers on
    the generic rule (`generic`, their names) and their variables (`generic_variables`,
    which the recording tape watches), or why the model cannot take one pass
    (`unsupported`)."""

    layers: tuple = ()
    rules: dict = dataclasses.field(default_factory=dict)
    owners: dict = dataclasses.field(default_factory=dict)  # id(variable) -> id(layer)
    generic: tuple = ()
    generic_variables: tuple = ()
    unsupported: str | None = None


def make_plan(network) -> Plan:
    """The owners of the target path's and the heads' variables, and their rules
    (`network`: a `StreamNetwork`)."""
    owners = {}
    for root in [network.trunk, *network.heads]:
        for layer in root._flatten_layers(include_self=True, recursive=True):
            if layer.trainable:
                for variable in layer._trainable_variables:
                    owners.setdefault(id(variable), layer)
    heads = [v for head in network.heads[1:] for v in head.trainable_variables]
    missing = [v.path for v in network.path_variables + heads if id(v) not in owners]
    if missing:
        return Plan(unsupported=f"no layer owns {missing[:3]} directly")
    path = network.path_variables
    layers = list({id(owners[id(v)]): owners[id(v)] for v in path + heads}.values())
    rules = {id(layer): rule_for(layer) for layer in layers}
    generic = [layer for layer in layers if isinstance(rules[id(layer)], VectorJacobianRule)]
    path_owners = {id(v): id(owners[id(v)]) for v in path}
    generic_variables = tuple(v for layer in generic for v in owned_variables(layer))
    names = tuple(layer.name for layer in generic)
    return Plan(tuple(layers), rules, path_owners, names, generic_variables)


@dataclasses.dataclass(frozen=True)
class Gradients:
    """What one pass gives a step's batches (the streams', then the target's).

    Attributes:
        losses: each batch's loss (the global-batch mean, times the replicas).
        stacked_grads: V tensors [batches, n_v]: each variable of the target's path, its
            gradient from each batch, flattened (float32, unscaled; zeros where a batch
            has none).
        own_grads: each batch's gradients on its own head and label adapter.
    """

    losses: list
    stacked_grads: list
    own_grads: list


class JointPass:
    """The per-stream gradients of a step from one recorded pass over the joint batch.

    Args:
        network: the `StreamNetwork` (trunk, heads, label adapters).
    """

    def __init__(self, network):
        self.network = network
        self._plan = None

    def plan(self) -> Plan:
        if self._plan is None:
            self._plan = make_plan(self.network)
            if self._plan.unsupported:
                logging.warning(_FALLBACK, self._plan.unsupported)
            elif self._plan.generic:
                logging.info(
                    "gradient_memory='one_pass': layers %s take each stream's gradient by a "
                    "vector-Jacobian product of the layer (one backward pass of the layer a "
                    "stream); the others by their formulas.",
                    ", ".join(self._plan.generic),
                )
        return self._plan

    def gradients(self, batches, guard) -> Gradients | None:
        """Losses and gradients of `batches` (the streams', then the target's), or None
        when this pass cannot be recorded (logged; the caller takes one pass a stream).
        `guard`: the step's `StepGuard` (loss scaling)."""
        plan = self.plan()
        unrecordable = plan.unsupported or _unlike_inputs(batches)
        adapters = [v for a in self.network.label_adapters for v in a.trainable_variables]
        watched = adapters + list(plan.generic_variables)  # (outside any autocast scope)
        if unrecordable is None:
            try:
                with tf.GradientTape(
                    persistent=bool(plan.generic), watch_accessed_variables=False
                ) as tape:
                    tape.watch([v.value for v in watched])  # (and the rules' outputs)
                    per_example, calls = self._forward(plan, batches, tape)
                    losses = [scaled_mean(p, b) for p, b in zip(per_example, batches)]
                    scaled_loss = guard.scale_loss(tf.add_n(losses))
                unrecordable = self._uncalled(plan, calls)
            except UnsupportedCall as error:
                unrecordable = str(error)
        if unrecordable is not None:
            if not plan.unsupported:  # (said once, by `plan`)
                logging.warning(_FALLBACK, unrecordable)
            return None
        output_grads = tape.gradient(
            scaled_loss,
            [call.watched for call in calls] + adapters,
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        adapter_grads = dict(zip(map(id, adapters), output_grads[len(calls) :]))
        whole, parts = _by_batch(calls, output_grads, len(batches))
        del tape
        return self._assemble(batches, losses, whole, parts, adapter_grads, guard)

    def _uncalled(self, plan, calls) -> str | None:
        """What is wrong when a recorded pass did not call the owner of a path variable."""
        called = {id(call.layer) for call in calls}
        paths = [v.path for v in self.network.path_variables if plan.owners[id(v)] not in called]
        return f"the pass did not call the layers of {paths[:3]}" if paths else None

    def _forward(self, plan, batches, tape):
        """[B] per-example losses of each batch, and the recorded layer calls."""
        network = self.network
        sizes = tuple(b.x.shape[0] or tf.shape(b.x)[0] for b in batches)  # static if known
        with recording(plan.layers, plan.rules, tape) as recorder:
            recorder.segments, recorder.sizes = tuple(range(len(batches))), sizes
            features = network.trunk(tf.concat([b.x for b in batches], axis=0), training=True)
            parts = split_rows(features, sizes)
            per_example = []
            for i, (batch, part) in enumerate(zip(batches, parts)):
                recorder.segments, recorder.sizes = (i,), (sizes[i],)
                per_example.append(network.head_loss(batch, part))
        return per_example, recorder.calls

    def _assemble(self, batches, losses, whole, parts, adapter_grads, guard) -> Gradients:
        """The gradients as `StepContext.stream_gradients` gives them (float32, unscaled,
        zeros where a batch has none), those of the target's path stacked."""
        network = self.network

        def batch_grad(variable, batch):  # [n_v]
            grads = parts.get(id(variable), {}).get(batch)
            if grads is None:
                return tf.zeros([variable.shape.num_elements()], variable.dtype)
            return tf.cast(tf.add_n(grads), variable.dtype)

        def stacked(variable):  # [batches, n_v]
            totals = [tf.cast(g, variable.dtype) for g in whole.get(id(variable), [])]
            if id(variable) in parts or not totals:
                totals.append(tf.stack([batch_grad(variable, b) for b in range(len(batches))]))
            return totals[0] if len(totals) == 1 else tf.add_n(totals)

        path_grads = guard.unscale([stacked(v) for v in network.path_variables])
        own_grads = []
        for b, batch in enumerate(batches):
            own = network.own_variables(batch.head, batch.adapter)
            own_grads.append(
                guard.unscale(
                    [
                        tf.cast(adapter_grads[id(v)], v.dtype)
                        if id(v) in adapter_grads
                        else tf.reshape(batch_grad(v, b), v.shape)
                        for v in own
                    ]
                )
            )
        replicas = distribute.num_replicas()
        return Gradients([loss * replicas for loss in losses], path_grads, own_grads)
