"""Each stream's share of a layer's weight gradient, from one pass over the joint batch.

A layer's weight gradient over a batch is a sum over its examples: for a kernel, of
(input activation) x (gradient at the layer's pre-activation output); for a scale or
an offset, of (gradient at the output) times the normalised input, or alone. So one
forward and one backward pass over the streams' batches concatenated give every
stream's weight gradient, each the sum over its own rows, in the arithmetic of one
joint weight gradient split among the streams (`gradient_memory="one_pass"`,
`training.one_pass`).

A `LayerRule` runs a layer's forward pass for the recording (`call`: the layer's own
computation, with the tensor where the needed output gradient is taken watched by the
recording tape, so the backward pass gives that gradient too) and turns what it
recorded and that output gradient into each stream's gradients of the layer's own
variables, flattened (`gradients`). The rules, by layer type (`rule_for`):

- Dense, Conv1D/2D/3D (not causal), DepthwiseConv2D: the watched tensor is the output
  before the bias and the activation; the kernel's gradient is, for a Dense layer or a
  1x1 convolution of stride 1 with the streams' batches of one static size, one batched
  matmul of the streams' rows of the input and of the output gradient, and otherwise
  the vector-Jacobian product of the layer's own linear operation (`ops.matmul`,
  `convolution_op`, `ops.depthwise_conv`; for 2D convolutions TensorFlow's filter
  gradient op) on each stream's rows; the bias's, the output gradient summed over the
  stream's rows.
- BatchNormalization (no renorm, not synchronised, no mask), LayerNormalization (no
  `rms_scaling`): the watched tensor is the output; scale and offset take the sums of
  (output gradient x normalised input) and of the output gradient over the stream's
  rows, the input normalised with the statistics the layer used (in training mode,
  batch normalisation runs on each stream's rows on its own, with their own moments,
  as one pass a stream does; the moving ones in inference mode).
- Embedding: the output gradient's rows scattered to the stream's ids.
- Any other layer that owns trainable variables (`VectorJacobianRule`): the watched
  tensor is the output, and each stream's gradient is the layer's vector-Jacobian
  product with the output gradient masked to the stream's rows: exact for any layer,
  at one backward pass of that layer a stream.

Layers of these types whose behaviour these formulas do not cover (LoRA, quantised
weights, a causal Conv1D, a subclass with its own `call`) take the generic rule.
"""

from __future__ import annotations

import dataclasses
import threading

import keras
import numpy as np
import tensorflow as tf
from keras import ops


@dataclasses.dataclass
class LayerCall:
    """One call of a layer in the recorded pass.

    Attributes:
        layer: the layer.
        rule: its `LayerRule`.
        segments: the step's batch indices (streams, then the target) whose rows
            the call's inputs hold, in order.
        sizes: the number of rows of each segment (ints where static, else scalar tensors).
        watched: the tensor whose gradient is the output gradient the rule needs.
        inputs: the call's first input (in the layer's compute dtype).
        output: the layer's output (the generic rule's product).
        saved: what the rule keeps of the forward pass (a kernel, the statistics).
        tape: the tape recording the pass.
    """

    layer: keras.Layer
    rule: LayerRule
    segments: tuple
    sizes: tuple
    tape: tf.GradientTape
    watched: tf.Tensor | None = None
    inputs: tf.Tensor | None = None
    output: tf.Tensor | None = None
    saved: dict = dataclasses.field(default_factory=dict)


def _watched(value, record: LayerCall):
    """`value`, watched by the recording tape: the backward pass gives its gradient."""
    record.watched = value
    record.tape.watch(value)
    return value


def static_sizes(sizes) -> list[int] | None:
    """Segments' sizes (ints, or scalar tensors) as ints, or None when one is known only as
    the step runs."""
    sizes = [tf.get_static_value(n) for n in sizes]
    return None if any(n is None for n in sizes) else [int(n) for n in sizes]


def split_rows(tensor, sizes) -> list:
    """The rows of each of consecutive segments of `sizes` rows (ints, or scalar tensors)."""
    if len(sizes) == 1:
        return [tensor]
    return tf.split(tensor, static_sizes(sizes) or tf.stack(sizes), num=len(sizes))


def _flat(stacked, count: int):
    """[segments, n]: each segment's gradient [segments, *variable shape], flattened."""
    return stacked if stacked.shape.rank == 2 else tf.reshape(stacked, [count, -1])


def _grouped(tensor, record: LayerCall):
    """[segments, rows x positions, channels]: a channels-last tensor's rows by segment,
    where the segments are of one static size (else None)."""
    sizes = static_sizes(record.sizes)
    if sizes is None or len(set(sizes)) != 1 or tensor.shape[-1] is None:
        return None
    return tf.reshape(tensor, [len(sizes), -1, tensor.shape[-1]])


def _segment_ids(record: LayerCall):
    """[N] the segment of each row of a recorded call: a constant where the sizes are
    static (`tf.repeat`, traced once a layer, took most of a large model's tracing)."""
    sizes = static_sizes(record.sizes)
    if sizes is not None:
        return tf.constant(np.repeat(np.arange(len(sizes), dtype=np.int32), sizes))
    return tf.concat([tf.fill([n], s) for s, n in enumerate(record.sizes)], axis=0)


def _row_sums(rows, record: LayerCall):
    """[segments, ...] sums over the rows of each segment of a [N, ...] tensor."""
    count = len(record.sizes)
    if count == 1:
        return tf.reduce_sum(rows, axis=0, keepdims=True)
    sizes = static_sizes(record.sizes)
    if sizes is not None and len(set(sizes)) == 1 and rows.shape[1:].is_fully_defined():
        # Segments of one size: a reshape.
        return tf.reduce_sum(tf.reshape(rows, [count, sizes[0], *rows.shape[1:]]), axis=1)
    return tf.math.segment_sum(rows, _segment_ids(record))


def owned_variables(layer) -> list:
    """The trainable variables a layer owns itself (not its sublayers')."""
    return [v for v in layer._trainable_variables if v.trainable] if layer.trainable else []


class LayerRule:
    """How one kind of layer is recorded and split into the streams' gradients."""

    def call(self, layer, record: LayerCall, original, args, kwargs):
        """The layer's output, recording what `gradients` needs in `record`."""
        raise NotImplementedError

    def gradients(self, record: LayerCall, output_gradient) -> dict:
        """{variable id: [segments, n_v]}: each segment's gradient of each of the layer's
        own variables, flattened.

        Args:
            record: the call.
            output_gradient: the gradient of the loss at `record.watched`.
        """
        raise NotImplementedError


class VectorJacobianRule(LayerRule):
    """Any layer: the output gradient masked to a stream's rows, back through the layer."""

    def call(self, layer, record, original, args, kwargs):
        output = original(*args, **kwargs)
        if not tf.is_tensor(output) or output.shape.rank in (None, 0):
            raise UnsupportedCall(f"{layer.name} returns {type(output).__name__}, not one tensor")
        record.output = output
        return _watched(output, record)

    def gradients(self, record, output_gradient):
        variables, tape = owned_variables(record.layer), record.tape
        ids = _segment_ids(record)
        mask_shape = [-1] + [1] * (output_gradient.shape.rank - 1)
        segments = []
        for s in range(len(record.sizes)):
            mask = tf.reshape(tf.cast(tf.equal(ids, s), output_gradient.dtype), mask_shape)
            segments.append(
                tape.gradient(
                    record.output,
                    variables,
                    output_gradients=output_gradient * mask,
                    unconnected_gradients=tf.UnconnectedGradients.ZERO,
                )
            )
        count = len(record.sizes)
        return {id(v): _flat(tf.stack(grads), count) for v, grads in zip(variables, zip(*segments))}


class UnsupportedCall(Exception):
    """A call the one-pass recording cannot take (the step falls back to one pass a stream)."""


class KernelRule(LayerRule):
    """Dense, convolutions, depthwise convolutions: y = activation(op(x, kernel) + bias)."""

    def linear(self, layer, inputs, kernel):
        raise NotImplementedError

    def bias_shape(self, layer, rank: int):
        """The shape the bias is broadcast in (channels last: the bias as it is)."""
        if getattr(layer, "data_format", "channels_last") == "channels_last":
            return None
        return (1, -1) + (1,) * (rank - 2)

    def call(self, layer, record, original, args, kwargs):
        inputs = args[0]
        kernel = tf.convert_to_tensor(layer.kernel)  # in the compute dtype (autocast)
        outputs = _watched(self.linear(layer, inputs, kernel), record)
        record.inputs, record.saved["kernel"] = inputs, kernel
        if layer.bias is not None:
            shape = self.bias_shape(layer, outputs.shape.rank)
            outputs = ops.add(
                outputs, layer.bias if shape is None else ops.reshape(layer.bias, shape)
            )
        return outputs if layer.activation is None else layer.activation(outputs)

    def pointwise(self, layer) -> bool:
        """Whether the kernel is a matrix applied at every position of the last axis (a
        Dense layer, a 1x1 convolution with stride 1, channels last)."""
        return False

    def gradients(self, record, output_gradient):
        layer, count = record.layer, len(record.sizes)
        rank = output_gradient.shape.rank
        channels_last = self.bias_shape(layer, rank) is None
        grouped = _grouped(output_gradient, record) if channels_last else None
        kernel = self.kernel_gradients(record, output_gradient, grouped)
        result = {id(layer.kernel): _flat(kernel, count)}
        if layer.bias is None:
            return result
        if grouped is not None:  # [segments, rows x positions, channels]
            result[id(layer.bias)] = tf.reduce_sum(grouped, axis=1)
            return result
        channel = rank - 1 if channels_last else 1
        rows = tf.reduce_sum(output_gradient, axis=[a for a in range(1, rank) if a != channel])
        result[id(layer.bias)] = _row_sums(rows, record)
        return result

    def kernel_gradients(self, record, output_gradient, grouped=None):
        """[segments, *kernel shape] (or [segments, in, out]): one matmul of the segments
        stacked where the kernel is pointwise and the segments are of one static size
        (`grouped`: the output gradient's rows by segment), else the vector-Jacobian
        product of the layer's linear operation on each segment's rows."""
        layer, kernel = record.layer, record.saved["kernel"]
        if self.pointwise(layer) and grouped is not None:
            inputs = _grouped(record.inputs, record)
            return tf.matmul(inputs, grouped, transpose_a=True)  # [segments, in, out]
        segments = []
        for inputs, grads in zip(
            split_rows(record.inputs, record.sizes), split_rows(output_gradient, record.sizes)
        ):
            grad = self.filter_gradient(layer, inputs, grads, kernel)
            if grad is None:
                with tf.GradientTape() as linear_tape:
                    linear_tape.watch(kernel)
                    outputs = self.linear(layer, inputs, kernel)
                grad = linear_tape.gradient(outputs, kernel, grads)
            segments.append(grad)
        return tf.stack(segments)

    def filter_gradient(self, layer, inputs, grads, kernel):
        """The kernel's gradient on one segment's rows by the operation the linear
        operation's own gradient runs, where there is one (else None: the tape's)."""
        return None


def _native_filter_gradient(backprop, layer, inputs, grads, kernel):
    """The kernel's gradient by TensorFlow's native 2D filter-gradient op `backprop`, for a
    channels-last 2D layer of dilation 1 and "same" or "valid" padding; else None."""
    if (
        inputs.shape.rank != 4
        or layer.data_format != "channels_last"
        or any(d != 1 for d in layer.dilation_rate)
        or layer.padding not in ("same", "valid")
    ):
        return None
    return backprop(
        input=inputs,
        filter_sizes=kernel.shape,
        out_backprop=grads,
        strides=[1, *layer.strides, 1],
        padding=layer.padding.upper(),
    )


class DenseRule(KernelRule):
    def linear(self, layer, inputs, kernel):
        return ops.matmul(inputs, kernel)

    def pointwise(self, layer):
        return True


class ConvRule(KernelRule):
    def linear(self, layer, inputs, kernel):
        return layer.convolution_op(inputs, kernel)

    def filter_gradient(self, layer, inputs, grads, kernel):
        if layer.groups != 1:
            return None
        return _native_filter_gradient(
            tf.raw_ops.Conv2DBackpropFilter, layer, inputs, grads, kernel
        )

    def pointwise(self, layer):
        return (
            layer.data_format == "channels_last"
            and layer.groups == 1
            and all(k == 1 for k in layer.kernel_size)
            and all(s == 1 for s in layer.strides)
        )


class DepthwiseConvRule(KernelRule):
    def linear(self, layer, inputs, kernel):
        return ops.depthwise_conv(
            inputs,
            kernel,
            strides=layer.strides,
            padding=layer.padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )

    def filter_gradient(self, layer, inputs, grads, kernel):
        backprop = tf.raw_ops.DepthwiseConv2dNativeBackpropFilter
        return _native_filter_gradient(backprop, layer, inputs, grads, kernel)


class NormalizationRule(LayerRule):
    """Scale and offset of a normalisation: y = x_hat * gamma + beta."""

    def parameter_axes(self, layer, rank: int) -> list[int]:
        raise NotImplementedError

    def forward(self, layer, record, original, args, kwargs):
        """(the layer's output, (mean, variance) it normalised its input with, float32)."""
        raise NotImplementedError

    def call(self, layer, record, original, args, kwargs):
        if kwargs.get("mask") is not None:
            raise UnsupportedCall(f"{layer.name} is called with a mask")
        record.inputs = args[0]
        outputs, record.saved["statistics"] = self.forward(layer, record, original, args, kwargs)
        return outputs if record.watched is not None else _watched(outputs, record)

    def scale_rows(self, record, grads, summed):
        """[N, parameter shape] each row's sum of (output gradient x normalised input)."""
        mean, variance = record.saved["statistics"]
        normalised = (tf.cast(record.inputs, tf.float32) - mean) * tf.math.rsqrt(
            variance + record.layer.epsilon
        )
        return tf.reduce_sum(grads * normalised, axis=summed)

    def gradients(self, record, output_gradient):
        layer, rank = record.layer, output_gradient.shape.rank
        grads = tf.cast(output_gradient, tf.float32)
        summed = [a for a in range(1, rank) if a not in self.parameter_axes(layer, rank)]
        parameters = []
        if layer.scale:
            parameters.append((layer.gamma, self.scale_rows(record, grads, summed)))
        if layer.center:
            parameters.append((layer.beta, tf.reduce_sum(grads, axis=summed)))
        count = len(record.sizes)
        return {  # rows: [N, parameter shape]
            id(variable): _flat(_row_sums(rows, record), count) for variable, rows in parameters
        }


class BatchNormalizationRule(NormalizationRule):
    """In training mode each segment's rows go through the layer on their own, as in one
    pass a stream: normalised with their own batch's moments, which update the moving
    statistics one segment after another (in the streams' order, the target's last). The
    statistics kept are the moments of each row's segment ([N, C]), or the moving ones
    ([1, C]) in inference mode; for segments of one static size in training mode, the
    input and its moments grouped by segment (`segments_at_once`)."""

    def parameter_axes(self, layer, rank):
        return [layer.axis % rank]

    def forward(self, layer, record, original, args, kwargs):
        if not (kwargs.get("training") and layer.trainable):
            statistics = (layer.moving_mean.value[None], layer.moving_variance.value[None])
            return original(*args, **kwargs), statistics
        sizes, shape = static_sizes(record.sizes), args[0].shape[1:]
        if len(record.sizes) > 1 and sizes and len(set(sizes)) == 1 and shape.is_fully_defined():
            return self.segments_at_once(layer, args[0], record)
        moments, thread = [], threading.get_ident()
        layer_moments = layer._moments

        def recorded_moments(*moment_args):
            result = layer_moments(*moment_args)
            if threading.get_ident() == thread:
                moments.append(result)
            return result

        vars(layer)["_moments"] = recorded_moments
        try:
            outputs = [
                original(rows, *args[1:], **kwargs) for rows in split_rows(args[0], record.sizes)
            ]
        finally:
            vars(layer).pop("_moments", None)
        means, variances = (tf.stack(m) for m in zip(*moments))  # [segments, C]
        if len(outputs) == 1:
            return outputs[0], (means, variances)
        ids = _segment_ids(record)
        statistics = (tf.gather(means, ids), tf.gather(variances, ids))
        return tf.concat(outputs, axis=0), statistics

    def segments_at_once(self, layer, inputs, record):
        """`forward` for segments of one static size, in one set of operations: the
        layer's own computation (its moments, `tf.nn.batch_normalization`) on the input
        grouped [segments, rows x ..., channels(, positions after the channel axis)], and
        the moving statistics as the layer's updates of one call a segment leave them, in
        one assignment each (one call a segment costs the layer's operations K + 1 times
        over in the graph). Keeps the grouped input and moments for `gradients`."""
        count, shape = len(record.sizes), inputs.shape
        axis = layer.axis % shape.rank
        after = int(np.prod(shape[axis + 1 :]))
        grouped_shape = [count, -1, shape[axis]] + ([after] if after > 1 else [])
        reduced = [1, 3] if after > 1 else [1]
        inputs = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        grouped = tf.reshape(inputs, grouped_shape)
        mean, variance = ops.moments(grouped, axes=reduced, keepdims=True)

        def parameter(variable):  # [C], or [C, 1] before the positions after the channels
            value = ops.cast(variable, inputs.dtype)
            return tf.reshape(value, [-1, 1]) if after > 1 else value

        gamma = parameter(layer.gamma) if layer.scale else None
        beta = parameter(layer.beta) if layer.center else None
        outputs = tf.nn.batch_normalization(grouped, mean, variance, beta, gamma, layer.epsilon)
        outputs = tf.reshape(_watched(outputs, record), [-1, *shape[1:]])  # (watched grouped)
        outputs = ops.cast(outputs, layer.compute_dtype)
        # m <- m * momentum + mean_s * (1 - momentum), for s = 1..count: in closed form.
        momentum = layer.momentum
        shares = [(1.0 - momentum) * momentum ** (count - 1 - s) for s in range(count)]
        shares = tf.constant(shares, inputs.dtype, shape=[count] + [1] * (len(grouped_shape) - 1))
        for moving, batch in ((layer.moving_mean, mean), (layer.moving_variance, variance)):
            update = tf.reduce_sum(batch * shares, axis=[0, *reduced])  # [C]
            moving.assign(ops.cast(moving, inputs.dtype) * momentum**count + update)
        record.saved["grouped"] = (reduced, grouped, mean, variance)
        return outputs, None

    def gradients(self, record, output_gradient):
        if "grouped" not in record.saved:
            return super().gradients(record, output_gradient)
        # (the output gradient at the grouped output, float32)
        reduced, inputs, mean, variance = record.saved["grouped"]
        layer, count, grads = record.layer, len(record.sizes), output_gradient
        result = {}
        if layer.scale:
            sums = tf.reduce_sum(grads * (inputs - mean), axis=reduced)  # [segments, C]
            inverse = tf.math.rsqrt(tf.reshape(variance, [count, -1]) + layer.epsilon)
            result[id(layer.gamma)] = sums * inverse
        if layer.center:
            result[id(layer.beta)] = tf.reduce_sum(grads, axis=reduced)
        return result

    def scale_rows(self, record, grads, summed):
        # The inverse standard deviation is one a channel (and row): applied to the sums.
        mean, variance = record.saved["statistics"]  # [1 or N, C]
        rank = grads.shape.rank
        axis = record.layer.axis % rank
        shape = [-1] + [mean.shape[-1] if a == axis else 1 for a in range(1, rank)]
        centred = tf.cast(record.inputs, tf.float32) - tf.reshape(mean, shape)
        rows = tf.reduce_sum(grads * centred, axis=summed)
        return rows * tf.math.rsqrt(variance + record.layer.epsilon)


class LayerNormalizationRule(NormalizationRule):
    def parameter_axes(self, layer, rank):
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        return sorted(a % rank for a in axes)

    def forward(self, layer, record, original, args, kwargs):
        inputs = tf.cast(args[0], tf.float32)
        axes = self.parameter_axes(layer, inputs.shape.rank)
        if 0 in axes:
            raise UnsupportedCall(f"{layer.name} normalises over the batch axis")
        return original(*args, **kwargs), tf.nn.moments(inputs, axes=axes, keepdims=True)


class EmbeddingRule(LayerRule):
    def call(self, layer, record, original, args, kwargs):
        record.inputs = args[0]
        return _watched(original(*args, **kwargs), record)

    def gradients(self, record, output_gradient):
        layer = record.layer
        vocabulary, width = layer.embeddings.shape
        segments = []
        for ids, grads in zip(
            split_rows(record.inputs, record.sizes), split_rows(output_gradient, record.sizes)
        ):
            rows = tf.reshape(tf.cast(grads, tf.float32), [-1, width])
            ids = tf.reshape(tf.cast(ids, tf.int32), [-1])
            segments.append(tf.math.unsorted_segment_sum(rows, ids, vocabulary))
        return {id(layer.embeddings): _flat(tf.stack(segments), len(segments))}


def _plain(layer, cls) -> bool:
    """`layer` computes what `cls.call` computes (no own `call`, no LoRA or quantisation)."""
    return (
        type(layer).call is cls.call
        and not getattr(layer, "lora_enabled", False)
        and layer.dtype_policy.quantization_mode is None
    )


def rule_for(layer) -> LayerRule:
    """The rule of a layer that owns trainable variables (`VectorJacobianRule` for any
    layer the formulas do not cover)."""
    layers = keras.layers
    if _plain(layer, layers.Dense):
        return DenseRule()
    for conv in (layers.Conv1D, layers.Conv2D, layers.Conv3D):
        if _plain(layer, conv) and getattr(layer, "padding", "") != "causal":
            return ConvRule()
    if _plain(layer, layers.DepthwiseConv2D):
        return DepthwiseConvRule()
    if _plain(layer, layers.BatchNormalization) and not layer.renorm and not layer.synchronized:
        return BatchNormalizationRule()
    if _plain(layer, layers.LayerNormalization) and not layer.rms_scaling:
        return LayerNormalizationRule()
    if _plain(layer, layers.Embedding):
        return EmbeddingRule()
    return VectorJacobianRule()
