"""`GradMixModel`: a shared trunk, one head per label space, and GradMix's train_step."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import keras
import tensorflow as tf

from gradmix_tf import distribute
from gradmix_tf.errors import ConfigError
from gradmix_tf.mixing import adaptive_lr, groups
from gradmix_tf.networks.label_adapter import LabelAdapter, matched_classes
from gradmix_tf.rules import StreamBatch, make_rule
from gradmix_tf.training.learning_rate import with_adaptive_learning_rate
from gradmix_tf.training.options import GradMixOptions
from gradmix_tf.training.step_context import StepContext, StreamNetwork
from gradmix_tf.training.step_guard import StepGuard
from gradmix_tf.training.stream_passes import make_stream_passes

PSEUDO_LABEL_STREAM = "pseudo_labels"


def _layer_key(variable) -> str:
    """The layer owning a variable: its path without the variable's own name."""
    return variable.path.rsplit("/", 1)[0]


@keras.saving.register_keras_serializable(package="gradmix_tf")
class GradMixModel(keras.Model):
    """GradMix: multi-source transfer across domains and tasks.

    A trunk f_theta shared by every stream, a target head h_T and one head for
    each source label space that is not the target's. `call()` is target
    inference (class probabilities). `train_step` runs one GradMix step:
    per-stream gradients, layer-wise mixing weights from the target
    meta-objective (the mixing rule `options.rule`, `gradmix_tf.rules`),
    the mixed gradient, an adaptive learning rate and one optimizer update.
    Train it with plain `model.fit` on `MultiStreamData.train_dataset(...)`.

    A non-finite loss or gradient (NaN or Inf) in any stream, the labelled
    target included, never reaches the model (`training.step_guard`): the step
    checks every stream before it changes anything, on every replica alike,
    and stops (`on_nonfinite="stop"`) or skips the batch, counting it in
    `nonfinite_skipped` (a state variable, saved in checkpoints, and a log).
    The optimizer is built by `compile()` (or by `build()` when compiled
    first): the step applies it inside a `tf.cond`.

    Args:
        trunk: any Keras layer/model mapping inputs to features.
        target_class_names: the target label space.
        source_class_names: one label space per source, in stream order.
        source_names: a name per source (for logs); default `source_<k>`.
        num_unlabelled: size of T_u; > 0 adds the pseudo-labelled stream P
            and the pseudo-label table (filled by `PseudoLabeler`).
        source_label_relations: per source, None (classes matched to the
            target's by name) or a mapping of its class names to target class
            names, for `options.label_adapter`.
        options: a `GradMixOptions` (default: its defaults).
        **kwargs: fields of `GradMixOptions` (they replace those of
            `options`), and Keras `Model` arguments (`name`).

    Example:

    >>> model = GradMixModel(small_cnn(), [str(d) for d in range(10)],
    ...                      [["0", "1", "2", "3", "4"], ["5", "6", "7", "8", "9"]])
    >>> model.build((None, 32, 32, 3))
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> model.fit(data.train_dataset(32, seed=0), steps_per_epoch=100, epochs=10)

    Reference: J. Li et al., "GradMix: Multi-source Transfer across Domains
    and Tasks", WACV 2020.
    """

    def __init__(
        self,
        trunk: keras.Layer,
        target_class_names: Sequence[str],
        source_class_names: Sequence[Sequence[str]] = (),
        source_names: Sequence[str] | None = None,
        num_unlabelled: int = 0,
        options: GradMixOptions | None = None,
        source_label_relations: Sequence[Mapping[str, str] | None] | None = None,
        **kwargs,
    ):
        fields = set(GradMixOptions.field_names())
        option_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
        self.options = dataclasses.replace(options or GradMixOptions(), **option_kwargs)
        kwargs.setdefault("name", "gradmix")
        super().__init__(**kwargs)
        self.trunk = trunk
        self.target_class_names = tuple(str(c) for c in target_class_names)
        self.source_class_names = tuple(tuple(str(c) for c in cs) for cs in source_class_names)
        if source_names is None:
            source_names = [f"source_{k + 1}" for k in range(len(self.source_class_names))]
        self.source_names = tuple(source_names)
        if len(self.source_names) != len(self.source_class_names):
            raise ValueError(
                f"{len(self.source_names)} source names for {len(self.source_class_names)} sources."
            )
        relations = source_label_relations or [None] * len(self.source_class_names)
        if len(relations) != len(self.source_class_names):
            raise ValueError(
                f"{len(relations)} label relations for {len(self.source_class_names)} sources."
            )
        self.source_label_relations = tuple(
            None if r is None else {str(k): str(v) for k, v in dict(r).items()} for r in relations
        )
        self.num_unlabelled = int(num_unlabelled)
        if self.num_unlabelled < 0:
            raise ValueError(f"num_unlabelled must be >= 0, got {self.num_unlabelled}.")
        self.rule = make_rule(self.options)
        self.stream_passes = make_stream_passes(self.options.gradient_memory)
        self._make_heads()
        self._make_state()
        self.test_loss = keras.metrics.Mean(name="loss")
        self.test_accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def _make_heads(self):
        """One head per label space; index 0 is the target head h_T. With
        `options.label_adapter`, a label adapter for each source with classes of the
        target's (`stream_adapters`); it keeps a head of its own only for the warm-up
        of `adapter_start="estimate"`."""
        spaces = [self.target_class_names]
        self.stream_heads = []  # the head of each stream
        self.stream_adapters = []  # the label adapter of each stream, or None
        self.label_adapters = []
        own_head_for_adapter = self.options.adapter_start == "estimate"
        unknown = sorted(set(self.options.adapter_sources) - set(self.source_names))
        if unknown:
            raise ConfigError(
                f"step.adapter_sources names {unknown}, not sources of this model: its "
                f"sources are {list(self.source_names)}."
            )
        for k, classes in enumerate(self.source_class_names):
            adapter = self._make_label_adapter(k)
            self.stream_adapters.append(adapter)
            if adapter is not None and not own_head_for_adapter:
                self.stream_heads.append(0)
                continue
            if (
                adapter is None
                and classes == self.target_class_names
                and self.options.share_target_head
            ):
                self.stream_heads.append(0)
                continue
            if classes not in spaces[1:]:
                spaces.append(classes)
            self.stream_heads.append(spaces.index(classes, 1))
        self.heads = [
            keras.layers.Dense(len(classes), name="head_target" if i == 0 else f"head_{i}")
            for i, classes in enumerate(spaces)
        ]
        self.stream_names = self.source_names + (
            (PSEUDO_LABEL_STREAM,) if self.num_unlabelled else ()
        )
        if self.num_unlabelled:
            self.stream_heads.append(0)  # P is labelled in the target's label space.
            self.stream_adapters.append(None)

    def _make_label_adapter(self, source: int) -> int | None:
        """The index of source `source`'s new label adapter, or None (no adapters, or no
        class of the target's)."""
        options = self.options
        if not options.label_adapter:
            return None
        if options.adapter_sources and self.source_names[source] not in options.adapter_sources:
            return None
        matches = matched_classes(
            self.target_class_names,
            self.source_class_names[source],
            self.source_label_relations[source],
        )
        if not (matches >= 0).any():
            return None
        self.label_adapters.append(
            LabelAdapter(
                matches,
                len(self.target_class_names),
                start=options.adapter_start,
                strength=options.adapter_strength,
                absent_rows=options.adapter_absent_rows,
                trace_penalty=options.adapter_trace_penalty,
                learning_rate_scale=options.adapter_learning_rate_scale,
                name=f"label_adapter_{self.source_names[source]}",
            )
        )
        return len(self.label_adapters) - 1

    def _make_state(self):
        """GradMix state: non-trainable, saved in checkpoints."""

        def state(name, shape=(), dtype="float32", initializer="zeros"):
            return self.add_weight(
                shape=shape,
                dtype=dtype,
                initializer=initializer,
                trainable=False,
                aggregation="only_first_replica",
                name=name,
            )

        self.rho_ema = state("rho_ema")
        self.rho_steps = state("rho_steps")
        self.learning_rate_ratio = state("learning_rate_ratio", initializer="ones")
        self.nonfinite_skipped = state("nonfinite_skipped", dtype="int64")
        # 1 once the label adapters are in use (at once, or after the estimate's warm-up).
        self.label_adapters_active = None
        if self.label_adapters:
            warmup = self.options.adapter_start == "estimate"
            self.label_adapters_active = state(
                "label_adapters_active", initializer="zeros" if warmup else "ones"
            )
        if self.num_unlabelled:
            shape = (self.num_unlabelled,)
            self.pseudo_labels = state("pseudo_labels", shape, "int32")
            self.pseudo_label_weights = state("pseudo_label_weights", shape)
            self.pseudo_label_acceptance = state("pseudo_label_acceptance")
            self.pseudo_label_precision = state("pseudo_label_precision")

    # ------------------------------------------------------------------ model
    def build(self, input_shape):
        features = self.trunk.compute_output_shape(input_shape) if self.trunk.built else None
        if features is None:
            self.trunk.build(input_shape)
            features = self.trunk.compute_output_shape(input_shape)
        for head in self.heads:
            head.build(features)
        for adapter in self.label_adapters:
            adapter.build()
        self.network = StreamNetwork(
            self.trunk, self.heads, self.label_adapters, self.label_adapters_active
        )
        # The target's path: trunk + h_T; one mixing layer (or group) per owning layer
        # (or block of layers, `options.layer_groups`).
        self.path_variables = self.network.path_variables
        self.mixing_layer_names, self.mixing_layer_ids = groups.mixing_groups(
            [_layer_key(v) for v in self.path_variables], self.options.layer_groups
        )
        self.mixing_weights = self.add_weight(
            shape=(len(self.stream_names), len(self.mixing_layer_names)),
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
            name="mixing_weights",
        )
        self.rule.build(self.add_weight, len(self.stream_names), self.num_mixing_layers)
        self.built = True
        self._build_optimizer()

    @property
    def num_mixing_layers(self) -> int:
        """L: the layers (with trainable variables) on the target's path, or their groups
        (`options.layer_groups`, `gradmix_tf.mixing.groups`)."""
        return len(self.mixing_layer_names)

    def call(self, inputs, training=False):
        """Target inference: class probabilities of the target head."""
        logits = self.heads[0](self.trunk(inputs, training=training))
        return keras.ops.softmax(keras.ops.cast(logits, "float32"))

    def compile(self, optimizer="adam", **kwargs):
        """Keras's `compile`; with the adaptive learning rate, the optimizer's
        learning rate becomes `lr(t) * r_t` (`model.optimizer` is then a copy
        of the given optimizer, built from its config)."""
        if self.options.adaptive_learning_rate:
            optimizer = with_adaptive_learning_rate(optimizer, self.learning_rate_ratio)
        super().compile(optimizer=optimizer, **kwargs)
        self._build_optimizer()

    def compile_from_config(self, config):
        """Re-compiles a loaded model (Keras skips models that override `compile`)."""
        self.compile(**keras.saving.deserialize_keras_object(config))

    def _build_optimizer(self):
        """Creates the optimizer's variables once the model is built and compiled:
        `train_step` applies the optimizer inside a `tf.cond`, where no variable
        may be created (and a loaded model needs them for its saved state)."""
        optimizer = getattr(self, "optimizer", None)
        if self.built and optimizer is not None and not optimizer.built:
            optimizer.build(self.trainable_variables)

    # ------------------------------------------------------------- train step
    def train_step(self, data):
        step = self._step_context()
        # 1. One mini-batch per stream (the K sources, then P) and B_T; the rule may
        #    reweight their examples.
        streams, target = self._stream_batches(data)
        streams = self.rule.prepare_streams(step, streams, target)
        # 2-3. Stream gradients g_s [S][V] on the target's path (and on each stream's own
        #    head), the target gradient g_T [V] on B_T. The rule, the checks and rho see
        #    them global (all-reduced), their products taken once; `gradient_memory`
        #    keeps them for step 5 or takes them again there.
        passes = self.stream_passes.run(step, streams, target)
        head_grads = passes.head_grads
        # The streams (then the target) with a NaN/Inf loss or gradient [S + 1]: if
        # any, step 7 stops or skips, and nothing below changes any state.
        nonfinite = step.guard.nonfinite_streams(
            [*passes.losses, passes.target_loss], passes.gradients.squared_norms(), head_grads
        )
        # 4. Layer-wise mixing weights w [S, L] and lambda_T from the mixing rule.
        mix = self.rule.mix(step, streams, target, passes.gradients)
        # 5. Mixed gradient G [V] on the target's path; source heads keep their own.
        mixed = passes.mix(mix.weights, mix.target_weight)
        if mix.source_head_scale is not None:
            head_grads = [[g * mix.source_head_scale for g in own] for own in head_grads]
        # 6. Adaptive learning rate: rho_t = max(cos(G, g_T), 0) (r_t is set in `_update`),
        #    <G, g_T> from the products.
        rho = passes.gradients.batch_importance(
            lambda: distribute.all_reduce_sum(mixed), mix.weights, mix.target_weight
        )
        # 7. One optimizer step over every trainable variable (with r_t and w), unless
        #    a stream is not finite.
        grads, variables = self._with_source_heads(mixed, head_grads)
        step.guard.update_if_finite(
            nonfinite,
            self._update,
            (step.guard, grads, variables, mix.weights, rho, mix.state),
            grads,
        )
        return self._train_logs(step.guard, passes.target_loss, passes.losses, mix.weights, rho)

    def _step_context(self) -> StepContext:
        """What the step's helpers read (`training.step_context`), made as the step is traced."""
        guard = StepGuard(
            self.optimizer,
            self.nonfinite_skipped,
            self.stream_names,
            skips_nonfinite=self.options.on_nonfinite == "skip" or bool(self.jit_compile),
        )
        return StepContext(self.network, guard, self.mixing_layer_ids, self.num_mixing_layers)

    def _stream_batches(self, data):
        """The step's source (and pseudo-labelled) batches, and the labelled target's."""
        streams = [
            StreamBatch(x, y, head, adapter=adapter)
            for (x, y), head, adapter in zip(
                data["sources"], self.stream_heads, self.stream_adapters
            )
        ]
        if self.num_unlabelled:
            streams.append(self._pseudo_labelled_batch(*data["unlabelled"]))
        return streams, StreamBatch(*data["target"])

    def _pseudo_labelled_batch(self, x, ids):
        """The batch of T_u with its pseudo-labels; rejected examples weigh 0."""
        labels = tf.maximum(tf.gather(self.pseudo_labels, ids), 0)
        confidence = tf.gather(self.pseudo_label_weights, ids)
        accepted = tf.cast(confidence > 0.0, tf.float32)
        use_confidence = self.options.pseudo_label_confidence_weights
        example_weights = confidence if use_confidence else accepted
        return StreamBatch(x, labels, 0, example_weights, accepted)

    def _with_source_heads(self, mixed, head_grads):
        """Appends each source head's (and label adapter's) plain gradient, summed over the
        streams that train it."""
        grads, variables = list(mixed), list(self.path_variables)
        own = {}  # variable id -> (variable, [gradients]), in stream order
        for stream_grads, head, adapter in zip(head_grads, self.stream_heads, self.stream_adapters):
            for variable, grad in zip(self.network.own_variables(head, adapter), stream_grads):
                own.setdefault(id(variable), (variable, []))[1].append(grad)
        for variable, parts in own.values():
            grads.append(tf.add_n(parts))
            variables.append(variable)
        return grads, variables

    def _update(self, guard, grads, variables, mixing_weights, rho, rule_state=()):
        """Every state change of a step: r_t from rho_t (step 6), the optimizer step (7), w
        and the rule's state."""
        if self.options.adaptive_learning_rate:
            ema, steps, rho_mean = adaptive_lr.update_running_mean(
                self.rho_ema, self.rho_steps, rho, self.options.rho_decay
            )
            self.rho_ema.assign(ema)
            self.rho_steps.assign(steps)
            self.learning_rate_ratio.assign(
                adaptive_lr.learning_rate_ratio(
                    rho, rho_mean, self.options.r_min, self.options.r_max
                )
            )
        if tf.distribute.has_strategy():
            # All made here (in a `tf.cond`'s branch, as the update may be): the optimizer's
            # all-reduce fails on a mix of outer tensors and branch tensors (a head shared
            # by two sources).
            grads = [tf.identity(g) for g in grads]
        grads = guard.rescale(grads)
        self.optimizer.apply(grads, variables)
        self.mixing_weights.assign(mixing_weights)
        self.rule.assign_state(rule_state)

    def _train_logs(self, guard, target_loss, losses, mixing_weights, rho):
        logs = {"loss": target_loss, "loss/target": target_loss}
        mean_weights = tf.reduce_mean(mixing_weights, axis=1)  # [S]
        for s, name in enumerate(self.stream_names):
            logs[f"loss/{name}"] = losses[s]
            logs[f"mixing_weight/{name}"] = mean_weights[s]
        logs["rho"] = rho
        logs["learning_rate_ratio"] = self.learning_rate_ratio.value
        if guard.skips_nonfinite:
            logs["nonfinite_skipped"] = self.nonfinite_skipped.value
        if self.num_unlabelled:
            logs["pseudo_labels/acceptance"] = self.pseudo_label_acceptance.value
            logs["pseudo_labels/precision"] = self.pseudo_label_precision.value
        return distribute.reducible_logs(logs)

    # ------------------------------------------------------------ distribution
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Nothing to build from data once built and compiled (`build`, `compile`).

        Under a strategy, Keras's `fit` otherwise draws the first batch from the
        training iterator and averages it across replicas to build the model,
        which MultiWorkerMirroredStrategy cannot do for a nested multi-stream
        batch (and which a built model does not need).
        """
        optimizer = getattr(self, "optimizer", None)
        if self.built and optimizer is not None and optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    # -------------------------------------------------------------- evaluation
    def test_step(self, data):
        x, y = data[:2] if isinstance(data, tuple) else (data["image"], data["label"])
        probabilities = self(x, training=False)
        self.test_loss.update_state(keras.losses.sparse_categorical_crossentropy(y, probabilities))
        self.test_accuracy.update_state(y, probabilities)
        return distribute.reducible_logs(
            {"loss": self.test_loss.result(), "accuracy": self.test_accuracy.result()}
        )

    # ------------------------------------------------------------ serialising
    def get_config(self):
        config = super().get_config()
        config.update(
            trunk=keras.saving.serialize_keras_object(self.trunk),
            target_class_names=list(self.target_class_names),
            source_class_names=[list(c) for c in self.source_class_names],
            source_names=list(self.source_names),
            num_unlabelled=self.num_unlabelled,
            source_label_relations=list(self.source_label_relations),
            **self.options.to_dict(),
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["trunk"] = keras.saving.deserialize_keras_object(config["trunk"])
        return cls(**config)
