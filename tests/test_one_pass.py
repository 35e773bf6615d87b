"""`gradient_memory="one_pass"`: one pass over the joint batch gives the step of one pass a stream.

Where no layer mixes the rows of a batch (no batch normalisation in training mode, no
dropout), the streams' gradients, their products with the target's and the mixed gradient
of "one_pass" equal those of "store" (one forward and backward pass a stream), layer by
layer and for whole steps, on one and two replicas; under mixed precision to float16's
rounding. With batch normalisation in training mode the streams' gradients sum to the
gradient of joint training on the concatenated batch.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradmix_tf import distribute
from gradmix_tf.training import layer_gradients, one_pass
from gradmix_tf.training.gradmix_model import GradMixModel
from tests.model_testing import OTHER_CLASSES, TARGET_CLASSES, random_batch

SOURCES = (TARGET_CLASSES, OTHER_CLASSES)  # one source on h_T, one with a head of its own
NUM_UNLABELLED = 6
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
STEP_TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}  # after three Adam steps (tests/test_step_reference)
HALF_TOLERANCE = {"rtol": 2e-2, "atol": 2e-3}  # float16 compute, float32 variables


@keras.saving.register_keras_serializable(package="test_one_pass")
class Scale(keras.layers.Layer):
    """A layer no formula covers (its own `call`): the generic vector-Jacobian rule."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, inputs):
        return inputs * self.scale + 0.1 * tf.square(inputs) * self.scale


@keras.saving.register_keras_serializable(package="test_one_pass")
class ImageTrunk(keras.Model):
    """Every layer kind of images: convolutions (3x3, depthwise, 1x1), batch normalisation
    in inference mode (or training mode: `batch_norm_training`) over the channels (or
    another axis: `batch_norm_axis`), Dense, LayerNormalization and a layer of the generic
    rule."""

    def __init__(self, batch_norm_training=False, batch_norm_axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.batch_norm_training = batch_norm_training
        self.conv = keras.layers.Conv2D(4, 3, activation="relu", name="conv")
        self.depthwise = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", name="dw")
        self.bn = keras.layers.BatchNormalization(axis=batch_norm_axis, momentum=0.5, name="bn")
        self.pointwise = keras.layers.Conv2D(6, 1, activation="relu", name="pointwise")
        self.flatten = keras.layers.Flatten()
        self.dense = keras.layers.Dense(8, activation="tanh", name="dense")
        self.norm = keras.layers.LayerNormalization(name="ln")
        self.scale = Scale(name="scale")

    def call(self, x, training=False):
        x = self.bn(self.depthwise(self.conv(x)), training=training and self.batch_norm_training)
        x = self.dense(self.flatten(self.pointwise(x)))
        return self.scale(self.norm(x))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 8)


def video_trunk():
    return keras.Sequential(
        [
            keras.layers.Conv3D(3, (2, 3, 3), strides=(1, 2, 2), activation="relu", name="conv3d"),
            keras.layers.GlobalAveragePooling3D(),
            keras.layers.Dense(5, name="dense"),
        ],
        name="trunk",
    )


def token_trunk():
    return keras.Sequential(
        [
            keras.layers.Embedding(11, 4, name="embedding"),
            keras.layers.Flatten(),
            keras.layers.Dense(5, activation="relu", name="dense"),
        ],
        name="trunk",
    )


TRUNKS = {
    "image": (lambda: ImageTrunk(name="trunk"), (8, 8, 1)),
    "video": (video_trunk, (3, 6, 6, 2)),
    "tokens": (token_trunk, (5,)),
}


def make_model(
    gradient_memory, trunk="image", seed=0, batch_norm_axis=-1, **options
) -> GradMixModel:
    build_trunk, input_shape = TRUNKS[trunk]
    keras.utils.set_random_seed(seed)
    if batch_norm_axis != -1:
        build_trunk = lambda: ImageTrunk(batch_norm_axis=batch_norm_axis, name="trunk")  # noqa: E731
    trunk_layer = build_trunk()
    trunk_layer(tf.zeros((1, *input_shape), "int32" if trunk == "tokens" else "float32"))
    model = GradMixModel(
        trunk_layer,
        TARGET_CLASSES,
        SOURCES,
        num_unlabelled=NUM_UNLABELLED,
        gradient_memory=gradient_memory,
        **options,
    )
    model.build((None, *input_shape))
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    model.pseudo_labels.assign([0, 1, 2, -1, 1, 0])
    model.pseudo_label_weights.assign([0.9, 0.8, 0.7, 0.0, 0.6, 1.0])
    return model


def batch_for(trunk, seed=0, count=4):
    """A multi-stream batch of the trunk's inputs (images, clips or token ids)."""
    batch = random_batch(SOURCES, seed=seed, count=count, num_unlabelled=NUM_UNLABELLED)
    if trunk == "image":
        return batch
    rng = np.random.default_rng(seed + 100)
    shape = TRUNKS[trunk][1]

    def inputs():
        if trunk == "tokens":
            return tf.constant(rng.integers(0, 11, (count, *shape)), tf.int32)
        return tf.constant(rng.normal(size=(count, *shape)), tf.float32)

    batch["sources"] = tuple((inputs(), y) for _, y in batch["sources"])
    batch["target"] = (inputs(), batch["target"][1])
    batch["unlabelled"] = (inputs(), batch["unlabelled"][1])
    return batch


def step_gradients(model, batch, mixing_weights, dynamic_sizes=False):
    """The step's streams' and target's global gradients, their products, the mixed
    gradient for `mixing_weights`, the losses and the own heads' gradients (traced with
    the batches' sizes unknown with `dynamic_sizes`)."""
    signature = None
    if dynamic_sizes:
        spec = lambda t: tf.TensorSpec([None, *t.shape[1:]], t.dtype)  # noqa: E731
        signature = [tf.nest.map_structure(spec, batch)]

    @tf.function(input_signature=signature)
    def run(batch):
        streams, target = model._stream_batches(batch)
        step = model.stream_passes.run(model._step_context(), streams, target)
        return {
            "streams": step.gradients.streams,
            "target": step.gradients.target,
            "products": step.gradients.variable_products,
            "mixed": step.mix(mixing_weights, 0.7),
            "losses": [*step.losses, step.target_loss],
            "heads": step.head_grads,
        }

    return run(batch)


@pytest.mark.parametrize(
    "trunk, dynamic_sizes", [(t, False) for t in sorted(TRUNKS)] + [("image", True)]
)
def test_every_layer_gives_each_stream_its_gradient(trunk, dynamic_sizes):
    """Layer by layer: each stream's (and the target's) gradient on every variable of the
    target's path, on its own head, the products <g_T, g_s>, |g_T|^2, |g_s|^2 and the mixed
    gradient equal those of one pass a stream, to 1e-5; also where the step is traced
    without the batches' sizes."""
    stored, joint = make_model("store", trunk), make_model("one_pass", trunk)
    plan = one_pass.make_plan(joint.network)
    assert plan.unsupported is None
    assert plan.generic == (("scale",) if trunk == "image" else ())
    rules = {type(plan.rules[id(layer)]).__name__ for layer in plan.layers}
    expected = {
        "image": {"ConvRule", "DepthwiseConvRule", "BatchNormalizationRule", "DenseRule"}
        | {"LayerNormalizationRule", "VectorJacobianRule"},
        "video": {"ConvRule", "DenseRule"},
        "tokens": {"EmbeddingRule", "DenseRule"},
    }[trunk]
    assert rules == expected
    mixing_weights = tf.constant(
        np.random.default_rng(3).uniform(size=(3, joint.num_mixing_layers))
    )
    batch = batch_for(trunk)
    want = step_gradients(stored, batch, tf.cast(mixing_weights, tf.float32))
    got = step_gradients(joint, batch, tf.cast(mixing_weights, tf.float32), dynamic_sizes)
    assert_same_gradients(want, got, [v.path for v in stored.path_variables])


def assert_same_gradients(want, got, paths, tolerance=None):
    """`step_gradients` of "one_pass" (`got`) equal those of "store" (`want`)."""
    tolerance = tolerance or TOLERANCE
    for s, (want_grads, got_grads) in enumerate(zip(want["streams"], got["streams"])):
        for path, a, b in zip(paths, want_grads, got_grads):
            np.testing.assert_allclose(b, a, **tolerance, err_msg=f"stream {s}: {path}")
        assert max(float(tf.reduce_max(tf.abs(g))) for g in want_grads) > 1e-3
    for path, a, b in zip(paths, want["target"], got["target"]):
        np.testing.assert_allclose(b, a, **tolerance, err_msg=f"target: {path}")
    for name, a, b in zip(("dots", "target_sq", "stream_sq"), want["products"], got["products"]):
        np.testing.assert_allclose(b, a, **tolerance, err_msg=name)
    for path, a, b in zip(paths, want["mixed"], got["mixed"]):
        np.testing.assert_allclose(b, a, **tolerance, err_msg=f"mixed: {path}")
    np.testing.assert_allclose(got["losses"], want["losses"], **tolerance)
    for a, b in zip(tf.nest.flatten(want["heads"]), tf.nest.flatten(got["heads"])):
        np.testing.assert_allclose(b, a, **tolerance)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"rule": "closed_form", "label_adapter": True},
        {"rule": "pcgrad"},
        {"rule": "lookahead"},
    ],
    ids=["default", "label_adapter", "pcgrad", "lookahead"],
)
def test_one_pass_gives_the_stored_step(options):
    """Three steps: the same logs, trainable variables and mixing weights (to 1e-5), for
    the default rule, GradMix with label adapters, and the rules that read the gradients
    themselves."""
    stored, joint = make_model("store", **options), make_model("one_pass", **options)
    step, joint_step = tf.function(stored.train_step), tf.function(joint.train_step)
    for seed in range(3):
        logs = step(batch_for("image", seed))
        joint_logs = joint_step(batch_for("image", seed))
    for name, value in logs.items():
        np.testing.assert_allclose(joint_logs[name], value, **STEP_TOLERANCE, err_msg=name)
    for a, b in zip(stored.trainable_variables, joint.trainable_variables):
        np.testing.assert_allclose(b, a, **STEP_TOLERANCE, err_msg=a.path)
    np.testing.assert_allclose(joint.mixing_weights, stored.mixing_weights, **STEP_TOLERANCE)
    assert float(tf.math.reduce_std(stored.mixing_weights)) > 0.01


@pytest.mark.parametrize(
    "dynamic_sizes, axis",
    [(False, -1), (True, -1), (False, 1)],
    ids=["at_once", "a_call_a_stream", "at_once_axis_1"],
)
def test_batch_norm_in_training_mode_normalises_each_stream_on_its_own(dynamic_sizes, axis):
    """As in one pass a stream: each stream's rows normalised with their own batch's
    moments, the moving statistics updated once a stream in the streams' order. The
    gradients, their products, the mixed gradient and the moving statistics equal those of
    "store", to 1e-5, whether the streams' batches are normalised at once (sizes known
    when traced; over the channels or another axis) or by one call of the layer a stream;
    and so do three whole steps."""
    stored = make_model("store", batch_norm_axis=axis)
    joint = make_model("one_pass", batch_norm_axis=axis)
    for model in (stored, joint):
        model.trunk.batch_norm_training = True
    bn = joint.trunk.bn
    batch = batch_for("image", seed=2)
    streams, target = joint._stream_batches(batch)
    inputs = tf.concat([b.x for b in [*streams, target]], axis=0)
    normalised = joint.trunk.depthwise(joint.trunk.conv(inputs))
    joint_training_mean = 0.5 * bn.moving_mean.numpy() + 0.5 * tf.reduce_mean(
        normalised, axis=[a for a in range(4) if a != axis % 4]
    )
    mixing_weights = tf.constant(
        np.random.default_rng(3).uniform(size=(3, joint.num_mixing_layers)), tf.float32
    )
    want = step_gradients(stored, batch, mixing_weights)
    got = step_gradients(joint, batch, mixing_weights, dynamic_sizes)
    # (atol 1e-5: the bias before batch normalisation has a gradient of 0, and rounding)
    assert_same_gradients(want, got, [v.path for v in stored.path_variables], STEP_TOLERANCE)
    for name in ("moving_mean", "moving_variance"):
        want_value, got_value = getattr(stored.trunk.bn, name), getattr(bn, name)
        np.testing.assert_allclose(got_value, want_value, **TOLERANCE, err_msg=name)
    # (not one update from the joint batch, as joint training makes it)
    assert np.abs(bn.moving_mean.numpy() - joint_training_mean).max() > 1e-3
    if dynamic_sizes:
        return
    # Three steps of SGD (Adam would turn the rounding noise in the gradient of the bias
    # before the batch normalisation, 0 in exact arithmetic, into steps of its full size).
    for model in (stored, joint):
        model.compile(optimizer=keras.optimizers.SGD(0.1))
    step, joint_step = tf.function(stored.train_step), tf.function(joint.train_step)
    for seed in range(3):
        logs, joint_logs = step(batch_for("image", seed)), joint_step(batch_for("image", seed))
    for name, value in logs.items():
        np.testing.assert_allclose(joint_logs[name], value, **STEP_TOLERANCE, err_msg=name)
    for a, b in zip(stored.variables, joint.variables):
        np.testing.assert_allclose(b, a, **STEP_TOLERANCE, err_msg=a.path)


GLOBAL_BATCH = NUM_UNLABELLED  # three examples a stream on each of two replicas


def fit_two_steps(strategy, gradient_memory, batch_norm_training=False):
    """Two steps of `model.fit` under `strategy` on a global batch of 6 a stream."""
    with strategy.scope():
        model = make_model(gradient_memory, rule="closed_form")
    model.trunk.batch_norm_training = batch_norm_training
    batches = [batch_for("image", seed=i, count=GLOBAL_BATCH) for i in range(2)]
    stacked = tf.nest.map_structure(lambda *parts: tf.stack(parts), *batches)
    dataset = tf.data.Dataset.from_tensor_slices(stacked).unbatch().batch(GLOBAL_BATCH)
    weights = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs=None: weights.append(model.mixing_weights.numpy())
    )
    model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[record])
    variables = []  # (path, first replica's value)
    for variable in model.trainable_variables:
        value = variable.value
        variables.append((variable.path, getattr(value, "values", [value])[0].numpy()))
    return np.stack(weights), variables


def test_two_replicas_give_the_stored_step_of_one(two_replicas):
    """ "one_pass" on two replicas (each recording its own pass, in threads of its own)
    trains the model "store" trains on one device: the same mixing weights at each step and
    the same variables after two steps."""
    stored_weights, stored = fit_two_steps(tf.distribute.get_strategy(), "store")
    joint_weights, joint = fit_two_steps(two_replicas, "one_pass")
    assert stored_weights.shape == (2, 3, joint_weights.shape[-1])
    assert float(stored_weights.std()) > 0.01
    np.testing.assert_allclose(joint_weights, stored_weights, atol=1e-5)
    assert len(joint) == len(stored)
    for (path, value), (_, joint_value) in zip(stored, joint):
        np.testing.assert_allclose(joint_value, value, atol=1e-5, err_msg=path)


def test_two_replicas_with_batch_norm_in_training_mode_give_the_stored_step(two_replicas):
    """Batch normalisation in training mode on two replicas: each replica normalises its
    own rows of each stream, under "one_pass" as under "store"."""
    stored_weights, stored = fit_two_steps(two_replicas, "store", batch_norm_training=True)
    joint_weights, joint = fit_two_steps(two_replicas, "one_pass", batch_norm_training=True)
    np.testing.assert_allclose(joint_weights, stored_weights, atol=1e-5)
    for (path, value), (_, joint_value) in zip(stored, joint):
        if path != "trunk/dw/bias":  # before the batch normalisation: see the test above
            np.testing.assert_allclose(joint_value, value, atol=1e-5, err_msg=path)


@pytest.mark.parametrize("batch_norm_training", [False, True], ids=["inference", "training"])
def test_mixed_precision_gives_the_stored_step_to_half_precision(batch_norm_training):
    """mixed_float16 (float16 compute, float32 variables, loss scaling): the streams'
    gradients, products and mixed gradient of one pass equal one pass a stream's to
    float16's rounding (rtol 2e-2, atol 2e-3), are float32, and the step trains; with the
    batch normalisation in inference or training mode."""
    with distribute.precision_policy("mixed_float16"):
        stored, joint = make_model("store"), make_model("one_pass")
    for model in (stored, joint):
        model.trunk.batch_norm_training = batch_norm_training
    assert isinstance(joint.optimizer, keras.optimizers.LossScaleOptimizer)
    for model in (stored, joint):  # a scale this trunk's float16 gradients do not overflow
        model.optimizer.dynamic_scale.assign(256.0)
    mixing_weights = tf.fill([3, joint.num_mixing_layers], 0.5)
    batch = batch_for("image", seed=4)
    want = step_gradients(stored, batch, mixing_weights)
    got = step_gradients(joint, batch, mixing_weights)
    # In training mode the bias before the batch normalisation has a gradient of 0 in exact
    # arithmetic: float16's rounding is all there is of it, and differs.
    paths = [v.path for v in joint.path_variables]
    compared = [v for v, path in enumerate(paths) if not (batch_norm_training and "dw/b" in path)]
    for want_grads, got_grads in [
        *zip(want["streams"], got["streams"]),
        (want["mixed"], got["mixed"]),
    ]:
        for v in compared:
            assert got_grads[v].dtype == tf.float32 and np.isfinite(want_grads[v]).all()
            np.testing.assert_allclose(got_grads[v], want_grads[v], **HALF_TOLERANCE)
    for a, b in zip(want["products"], got["products"]):
        np.testing.assert_allclose(
            tf.gather(b, compared, axis=-1), tf.gather(a, compared, axis=-1), **HALF_TOLERANCE
        )
    logs = tf.function(joint.train_step)(batch)
    stored_logs = tf.function(stored.train_step)(batch)
    assert all(np.isfinite(float(v)) for v in logs.values()), logs
    assert int(joint.optimizer.iterations.numpy()) == 1
    np.testing.assert_allclose(joint.mixing_weights, stored.mixing_weights, **HALF_TOLERANCE)
    np.testing.assert_allclose(logs["rho"], stored_logs["rho"], **HALF_TOLERANCE)


@keras.saving.register_keras_serializable(package="test_one_pass")
class TwoOutputs(keras.layers.Layer):
    """A layer with weights that returns two tensors: no one-pass recording."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, inputs):
        return inputs * self.scale, inputs

    def compute_output_shape(self, input_shape):
        return input_shape, input_shape


@keras.saving.register_keras_serializable(package="test_one_pass")
class TwoOutputTrunk(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.flatten = keras.layers.Flatten()
        self.pair = TwoOutputs(name="pair")
        self.dense = keras.layers.Dense(5, name="dense")

    def call(self, x, training=False):
        scaled, _ = self.pair(self.flatten(x))
        return self.dense(scaled)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 5)


def test_a_pass_it_cannot_record_takes_one_pass_a_stream(caplog):
    """A layer whose call returns two tensors: the step says so and takes one pass a
    stream, the stored step exactly."""
    TRUNKS["two_outputs"] = (lambda: TwoOutputTrunk(name="trunk"), (8, 8, 1))
    try:
        stored, joint = make_model("store", "two_outputs"), make_model("one_pass", "two_outputs")
    finally:
        del TRUNKS["two_outputs"]
    with caplog.at_level("WARNING"):
        logs = tf.function(joint.train_step)(batch_for("image"))
    assert "pair returns tuple, not one tensor" in caplog.text
    assert "one pass a stream" in caplog.text
    stored_logs = tf.function(stored.train_step)(batch_for("image"))
    for name, value in stored_logs.items():
        np.testing.assert_allclose(logs[name], value, rtol=1e-6, err_msg=name)


def test_rules_by_layer():
    """The formulas take the plain layers; LoRA, a causal Conv1D and custom layers take
    the generic rule."""
    dense = keras.layers.Dense(3)
    dense.build((None, 4))
    assert isinstance(layer_gradients.rule_for(dense), layer_gradients.DenseRule)
    dense.enable_lora(2)
    assert isinstance(layer_gradients.rule_for(dense), layer_gradients.VectorJacobianRule)
    causal = keras.layers.Conv1D(2, 3, padding="causal")
    assert isinstance(layer_gradients.rule_for(causal), layer_gradients.VectorJacobianRule)
    assert isinstance(layer_gradients.rule_for(keras.layers.Conv1D(2, 3)), layer_gradients.ConvRule)
    assert isinstance(layer_gradients.rule_for(Scale()), layer_gradients.VectorJacobianRule)
    assert one_pass.make_plan(make_model("one_pass", "video")).generic == ()


@pytest.mark.parametrize("strides, padding", [(1, "same"), (2, "same"), (2, "valid")])
@pytest.mark.parametrize("kind", ["conv", "depthwise"])
def test_a_native_filter_gradient_is_the_linear_operations_own(kind, strides, padding):
    """The direct filter-gradient op gives bit for bit what the tape's VJP of the layer's
    linear operation gives."""
    if kind == "conv":
        layer, rule = keras.layers.Conv2D(4, 3, strides, padding), layer_gradients.ConvRule()
    else:
        layer, rule = (
            keras.layers.DepthwiseConv2D(3, strides, padding),
            layer_gradients.DepthwiseConvRule(),
        )
    inputs = tf.constant(np.random.default_rng(0).normal(size=(3, 9, 9, 2)), tf.float32)
    layer.build(inputs.shape)
    kernel = tf.convert_to_tensor(layer.kernel)
    with tf.GradientTape() as tape:
        tape.watch(kernel)
        outputs = rule.linear(layer, inputs, kernel)
    grads = tf.constant(np.random.default_rng(1).normal(size=outputs.shape), tf.float32)
    native = rule.filter_gradient(layer, inputs, grads, kernel)
    assert native is not None
    np.testing.assert_array_equal(native.numpy(), tape.gradient(outputs, kernel, grads).numpy())
