"""`GradMixModel`: a shared trunk, one head per label space, and GradMix's train_step."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from gradmix_tf.mixing import adaptive_lr, baselines, lookahead, weights
from gradmix_tf.training.learning_rate import with_adaptive_learning_rate

# "gradmix" is the method; the others are baselines in the same trainer (docs/algorithm.md).
MIXINGS = ("gradmix", "uniform", "pretrain_finetune", "example_reweighting", "pcgrad")
WEIGHT_SOLVERS = ("closed_form", "lookahead")
ON_NONFINITE = ("stop", "skip")
PSEUDO_LABEL_STREAM = "pseudo_labels"


def _layer_key(variable) -> str:
    """The layer owning a variable: its path without the variable's own name."""
    return variable.path.rsplit("/", 1)[0]


def _reducible_logs(logs: dict) -> dict:
    """`logs` as Keras can average them across workers.

    Under MultiWorkerMirroredStrategy, Keras 3 averages each log of a step
    over its axis 0 (`reduce_per_replica`), which fails on scalars
    (tensorflow/tensorflow#72388): there every log gets a leading axis of 1,
    which the average removes again.
    """
    if not isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return logs
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}


@keras.saving.register_keras_serializable(package="gradmix_tf")
class GradMixModel(keras.Model):
    """GradMix: multi-source transfer across domains and tasks.

    A trunk f_theta shared by every stream, a target head h_T and one head for
    each source label space that is not the target's. `call()` is target
    inference (class probabilities). `train_step` runs one GradMix step:
    per-stream gradients, layer-wise mixing weights from the target
    meta-objective, the mixed gradient, an adaptive learning rate and one
    optimizer update. Train it with plain `model.fit` on
    `MultiStreamData.train_dataset(...)`.

    A non-finite loss or gradient (NaN or Inf) in any stream, the labelled
    target included, never reaches the model: the step checks every stream
    before it changes anything (variables, optimizer state, r_t and its
    running mean, the mixing weights), on every replica alike. With
    `on_nonfinite="stop"` it raises `tf.errors.InvalidArgumentError` naming
    the stream(s) and the training step; with "skip" the batch changes
    nothing but the count `nonfinite_skipped` (a state variable, saved in
    checkpoints, and a log). The optimizer is built by `compile()` (or by
    `build()` when compiled first): the step applies it inside a `tf.cond`.

    Args:
        trunk: any Keras layer/model mapping inputs to features.
        target_class_names: the target label space.
        source_class_names: one label space per source, in stream order.
        source_names: a name per source (for logs); default `source_<k>`.
        share_target_head: a source whose class names equal the target's
            uses h_T (and so is mixed on it) instead of a head of its own.
        mixing: "gradmix" (weights from the meta-objective); or a baseline:
            "uniform" (every stream weight 1: joint training),
            "pretrain_finetune" (sources only for `pretrain_steps` steps, then
            the labelled target only), "example_reweighting" (per-example
            weights on the pooled sources from their alignment with the target
            gradient, Ren et al. 2018), "pcgrad" (gradient surgery over the
            streams and the target, Yu et al. 2020). See `mixing.baselines`.
        weight_solver: "closed_form" (one meta-gradient step from w = 0) or
            "lookahead" (the exact meta-gradient through a real look-ahead
            step from `lookahead_init`, with `stateless_call`).
        alignment: "dot" (the meta-gradient <g_T,l, g_s,l>) or "cosine"
            (closed form only; scale-free). Reconstruction option.
        granularity: "layer" (w per stream and layer) or "stream" (one global
            weight per stream).
        normalization: "per_layer", "all" or "none" (see `mixing.weights`).
            Reconstruction option.
        weight_total: the sum the weights of a layer are normalised to; a
            number, or "num_streams" for S (the scale of joint training).
        target_weight: lambda_T, the weight of the labelled target gradient
            in the mixed gradient.
        lookahead_init: the mixing weights the look-ahead starts from.
        lookahead_step_size: alpha of the look-ahead; None uses the
            optimizer's current learning rate.
        adaptive_learning_rate: scale the step size by r_t (step 6 in docs/algorithm.md).
        rho_decay: decay of the running mean of rho.
        r_min, r_max: the range r_t is clipped to.
        num_unlabelled: size of T_u; > 0 adds the pseudo-labelled stream P
            and the pseudo-label table (filled by `PseudoLabeler`).
        pseudo_label_confidence_weights: weight each pseudo-labelled example's
            loss by its stored confidence (else by 1).
        pretrain_steps: with mixing="pretrain_finetune", the steps of source
            pre-training before target fine-tuning.
        on_nonfinite: what a NaN/Inf loss or gradient does: "stop" (raise,
            naming the stream and the step, before any update) or "skip"
            (drop the batch; count it in `nonfinite_skipped`). XLA ignores
            asserts: under `jit_compile=True`, "stop" skips (and counts) too.
            With `mixed_float16` (a `LossScaleOptimizer`), a non-finite
            gradient with finite losses is a loss-scale overflow: the step
            is skipped (and counted) and the loss scale halved, as Keras does.
        jit_mixing_weights: solve the mixing weights with the XLA-compiled
            `weights.solve_mixing_weights_jit` (pure tensors in and out, so
            it also runs under tf.distribute; the all-reduce stays outside).

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
        share_target_head: bool = True,
        mixing: str = "gradmix",
        weight_solver: str = "closed_form",
        alignment: str = "dot",
        granularity: str = "layer",
        normalization: str = "per_layer",
        weight_total: float | str = 1.0,
        target_weight: float = 1.0,
        lookahead_init: float = 0.0,
        lookahead_step_size: float | None = None,
        adaptive_learning_rate: bool = True,
        rho_decay: float = 0.99,
        r_min: float = 0.5,
        r_max: float = 2.0,
        num_unlabelled: int = 0,
        pseudo_label_confidence_weights: bool = True,
        on_nonfinite: str = "stop",
        pretrain_steps: int = 0,
        jit_mixing_weights: bool = False,
        **kwargs,
    ):
        kwargs.setdefault("name", "gradmix")
        super().__init__(**kwargs)
        self.trunk = trunk
        self.target_class_names = tuple(str(c) for c in target_class_names)
        self.source_class_names = tuple(tuple(str(c) for c in cs) for cs in source_class_names)
        if source_names is None:
            source_names = [f"source_{k + 1}" for k in range(len(self.source_class_names))]
        self.source_names = tuple(source_names)
        self.share_target_head = share_target_head
        self.mixing = mixing
        self.weight_solver = weight_solver
        self.alignment = alignment
        self.granularity = granularity
        self.normalization = normalization
        self.weight_total = weight_total
        self.target_weight = float(target_weight)
        self.lookahead_init = float(lookahead_init)
        self.lookahead_step_size = lookahead_step_size
        self.adaptive_learning_rate = adaptive_learning_rate
        self.rho_decay = float(rho_decay)
        self.r_min = float(r_min)
        self.r_max = float(r_max)
        self.num_unlabelled = int(num_unlabelled)
        self.pseudo_label_confidence_weights = pseudo_label_confidence_weights
        self.on_nonfinite = on_nonfinite
        self.pretrain_steps = int(pretrain_steps)
        self.jit_mixing_weights = bool(jit_mixing_weights)
        self._check_options()

        # One head per label space; index 0 is the target head h_T.
        spaces = [self.target_class_names]
        self._stream_head = []
        for classes in self.source_class_names:
            if classes == self.target_class_names and share_target_head:
                self._stream_head.append(0)
                continue
            if classes not in spaces[1:]:
                spaces.append(classes)
            self._stream_head.append(spaces.index(classes, 1))
        self.heads = [
            keras.layers.Dense(len(classes), name="head_target" if i == 0 else f"head_{i}")
            for i, classes in enumerate(spaces)
        ]
        self.stream_names = self.source_names + (
            (PSEUDO_LABEL_STREAM,) if self.num_unlabelled else ()
        )
        if self.num_unlabelled:
            self._stream_head.append(0)  # P is labelled in the target's label space.

        # GradMix state: non-trainable, saved in checkpoints.
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
        if self.num_unlabelled:
            shape = (self.num_unlabelled,)
            self.pseudo_labels = state("pseudo_labels", shape, "int32")
            self.pseudo_label_weights = state("pseudo_label_weights", shape)
            self.pseudo_label_acceptance = state("pseudo_label_acceptance")
            self.pseudo_label_precision = state("pseudo_label_precision")
        self.test_loss = keras.metrics.Mean(name="loss")
        self.test_accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def _check_options(self):
        for value, allowed, what in (
            (self.mixing, MIXINGS, "mixing"),
            (self.weight_solver, WEIGHT_SOLVERS, "weight_solver"),
            (self.alignment, weights.ALIGNMENTS, "alignment"),
            (self.granularity, weights.GRANULARITIES, "granularity"),
            (self.normalization, weights.NORMALIZATIONS, "normalization"),
            (self.on_nonfinite, ON_NONFINITE, "on_nonfinite"),
        ):
            if value not in allowed:
                raise ValueError(f"{what} must be one of {allowed}, got {value!r}.")
        if self.weight_solver == "lookahead" and self.alignment != "dot":
            raise ValueError(
                "weight_solver='lookahead' measures the meta-gradient: use alignment='dot'."
            )
        if len(self.source_names) != len(self.source_class_names):
            raise ValueError(
                f"{len(self.source_names)} source names for {len(self.source_class_names)} sources."
            )
        if not (0.0 < self.r_min <= 1.0 <= self.r_max):
            raise ValueError(f"need 0 < r_min <= 1 <= r_max, got {self.r_min}, {self.r_max}.")
        total = self.weight_total
        if total != "num_streams" and (isinstance(total, str) or not total > 0):
            raise ValueError(
                f"weight_total must be a positive number or 'num_streams', got {total!r}."
            )
        if not 0.0 <= self.rho_decay < 1.0:
            raise ValueError(f"rho_decay must be in [0, 1), got {self.rho_decay}.")
        if self.mixing == "pretrain_finetune" and self.pretrain_steps <= 0:
            raise ValueError(
                "mixing='pretrain_finetune' needs pretrain_steps > 0 (the steps of source "
                f"pre-training), got {self.pretrain_steps}."
            )
        if self.num_unlabelled < 0:
            raise ValueError(f"num_unlabelled must be >= 0, got {self.num_unlabelled}.")
        if self.lookahead_step_size is not None and not self.lookahead_step_size > 0:
            raise ValueError(
                f"lookahead_step_size must be positive or None, got {self.lookahead_step_size}."
            )

    # ------------------------------------------------------------------ model
    def build(self, input_shape):
        features = self.trunk.compute_output_shape(input_shape) if self.trunk.built else None
        if features is None:
            self.trunk.build(input_shape)
            features = self.trunk.compute_output_shape(input_shape)
        for head in self.heads:
            head.build(features)
        # The target's path: trunk + h_T; one mixing layer per owning layer.
        self._path_variables = list(self.trunk.trainable_variables) + list(
            self.heads[0].trainable_variables
        )
        keys = list(dict.fromkeys(_layer_key(v) for v in self._path_variables))
        self.mixing_layer_names = tuple(keys)
        self._layer_ids = [keys.index(_layer_key(v)) for v in self._path_variables]
        self.mixing_weights = self.add_weight(
            shape=(len(self.stream_names), len(keys)),
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
            name="mixing_weights",
        )
        self.built = True
        self._build_optimizer()

    def call(self, inputs, training=False):
        """Target inference: class probabilities of the target head."""
        logits = self.heads[0](self.trunk(inputs, training=training))
        return keras.ops.softmax(keras.ops.cast(logits, "float32"))

    def compile(self, optimizer="adam", **kwargs):
        """Keras's `compile`; with the adaptive learning rate, the optimizer's
        learning rate becomes `lr(t) * r_t` (`model.optimizer` is then a copy
        of the given optimizer, built from its config)."""
        if self.adaptive_learning_rate:
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
        # 1. One mini-batch per stream: the K sources, then P (pseudo-labels).
        target_x, target_y = data["target"]
        streams = [(x, y, None) for x, y in data["sources"]]
        if self.num_unlabelled:
            streams.append(self._pseudo_labelled_batch(*data["unlabelled"]))
        stream_totals = None  # example reweighting: each stream's share of the weight
        if self.mixing == "example_reweighting" and streams:
            streams, stream_totals = self._reweighted_streams(streams, target_x, target_y)
        # 2. Stream gradients g_s, w.r.t. the target's path and the stream's own head.
        losses, path_grads, head_grads = [], [], []
        for (x, y, example_weights), head in zip(streams, self._stream_head):
            loss, grads, own = self._stream_gradients(x, y, example_weights, head)
            losses.append(loss)
            path_grads.append(grads)
            head_grads.append(own)
        # 3. Target gradient g_T on the labelled target batch.
        target_loss, target_grads, _ = self._stream_gradients(target_x, target_y, None, 0)
        # The streams (then the target) with a NaN/Inf loss or gradient [S + 1]:
        # if any, step 7 stops or skips, and nothing below changes any state.
        nonfinite = self._nonfinite_streams(
            losses + [target_loss],
            [p + h for p, h in zip(path_grads, head_grads)] + [target_grads],
        )
        # Mixing weights and rho come from the global (all-reduced) gradients.
        global_target = self._all_reduce(target_grads)
        global_streams = [self._all_reduce(g) for g in path_grads]
        # 4. Layer-wise mixing weights w [S, L] from the target meta-objective.
        mixing_weights, target_weight = self._mixing_weights(
            target_x, target_y, global_target, global_streams, stream_totals
        )
        if self.mixing == "pretrain_finetune":  # source heads rest while fine-tuning
            pretraining = 1.0 - target_weight / self.target_weight
            head_grads = [[g * pretraining for g in own] for own in head_grads]
        # 5. Mixed gradient on the target's path; source heads keep their own gradients.
        mixed = weights.mix_gradients(
            path_grads, mixing_weights, self._layer_ids, target_grads, target_weight
        )
        # 6. Adaptive learning rate for this mini-batch: rho_t, whose r_t (set in
        #    `_update`) scales the step size.
        global_mixed = mixed
        if self._num_replicas() > 1:
            global_mixed = weights.mix_gradients(
                global_streams, mixing_weights, self._layer_ids, global_target, target_weight
            )
        rho = adaptive_lr.batch_importance(global_mixed, global_target)
        # 7. One optimizer step over every trainable variable (with r_t and w), or
        #    none: `on_nonfinite` stops or skips.
        self._update_if_finite(nonfinite, (mixed, head_grads, mixing_weights, rho))
        return self._train_logs(target_loss, losses, mixing_weights, rho)

    def _pseudo_labelled_batch(self, x, ids):
        """The batch of T_u with its pseudo-labels; rejected examples weigh 0."""
        labels = tf.maximum(tf.gather(self.pseudo_labels, ids), 0)
        confidence = tf.gather(self.pseudo_label_weights, ids)
        accepted = tf.cast(confidence > 0.0, tf.float32)
        example_weights = confidence if self.pseudo_label_confidence_weights else accepted
        return x, labels, (example_weights, accepted)

    def _stream_gradients(self, x, y, example_weights, head):
        """The scaled loss of one stream and its gradients (zeros, never None)."""
        own_variables = self.heads[head].trainable_variables if head else []
        with tf.GradientTape() as tape:
            logits = self.heads[head](self.trunk(x, training=True), training=True)
            per_example = keras.losses.sparse_categorical_crossentropy(
                y, keras.ops.cast(logits, "float32"), from_logits=True
            )
            loss = self._scaled_mean(per_example, example_weights)
        variables = self._path_variables + own_variables
        grads = tape.gradient(loss, variables, output_gradients=self._loss_scale())
        # A stream with its own head has no gradient on h_T: zeros, not None.
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
        grads = self._unscale(grads)
        num_path = len(self._path_variables)
        return loss * self._num_replicas(), grads[:num_path], grads[num_path:]

    def _scaled_mean(self, per_example, example_weights):
        """The mean over the GLOBAL batch, so replicas' gradients sum to it.

        `example_weights` is None, (weights, accepted) for a weighted mean over
        the accepted examples, or (weights, None) for weights that already sum
        to 1 over the global batch (example reweighting).
        """
        if example_weights is None:
            count = tf.cast(tf.shape(per_example)[0], tf.float32) * self._num_replicas()
            return tf.reduce_sum(per_example) / count
        example_weights, accepted = example_weights
        if accepted is None:
            return tf.reduce_sum(tf.stop_gradient(example_weights) * per_example)
        count = tf.maximum(self._all_reduce([tf.reduce_sum(accepted)])[0], 1.0)
        return tf.reduce_sum(example_weights * per_example) / count

    def _mixing_weights(self, target_x, target_y, target_grads, stream_grads, stream_totals=None):
        """Step 4: the mixing weights [S, L] and the labelled target's weight."""
        num_streams, num_layers = len(stream_grads), len(self.mixing_layer_names)
        if self.mixing == "pretrain_finetune":
            stream_weights, target_factor = baselines.pretrain_finetune_weights(
                self.optimizer.iterations, self.pretrain_steps, num_streams, num_layers
            )
            return stream_weights, self.target_weight * target_factor
        if num_streams == 0:
            return tf.zeros([0, num_layers]), self.target_weight
        if self.mixing == "uniform":
            return tf.ones([num_streams, num_layers]), self.target_weight
        if self.mixing == "example_reweighting":
            stream_weights = tf.tile(tf.stack(stream_totals)[:, None], [1, num_layers])
            return stream_weights, self.target_weight
        if self.mixing == "pcgrad":
            tasks = stream_grads + [[self.target_weight * g for g in target_grads]]
            coefficients = baselines.pcgrad_coefficients(baselines.gram_matrix(tasks))
            stream_weights = tf.tile(coefficients[:-1, None], [1, num_layers])
            return stream_weights, self.target_weight * coefficients[-1]
        return self._gradmix_weights(target_x, target_y, target_grads, stream_grads), (
            self.target_weight
        )

    def _gradmix_weights(self, target_x, target_y, target_grads, stream_grads):
        num_streams, num_layers = len(stream_grads), len(self.mixing_layer_names)
        total = num_streams if self.weight_total == "num_streams" else float(self.weight_total)
        if self.weight_solver == "lookahead":
            u = self._lookahead_alignment(target_x, target_y, stream_grads)
            if self.granularity == "stream":
                u = tf.tile(tf.reduce_sum(u, axis=1, keepdims=True), [1, num_layers])
            return weights.normalize_weights(u, self.normalization, total)
        dots, target_sq, stream_sq = weights.per_variable_products(target_grads, stream_grads)
        solve = weights.solve_mixing_weights_jit if self.jit_mixing_weights else None
        mixing_weights, _ = (solve or weights.solve_mixing_weights)(
            dots,
            target_sq,
            stream_sq,
            tf.constant(self._layer_ids, tf.int32),
            num_layers,
            alignment=self.alignment,
            granularity=self.granularity,
            normalization=self.normalization,
            weight_total=total,
        )
        return mixing_weights

    def _reweighted_streams(self, streams, target_x, target_y):
        """Example reweighting (Ren et al. 2018) on the pooled stream batches.

        a_i = <g_T, grad l_i> over the target's path: the negative
        meta-gradient of the target loss after one step on sum_i eps_i l_i,
        w.r.t. eps_i at eps = 0, by a nested tape (double backward). The
        examples' weights are max(a_i, 0) normalised over the pooled global
        batch. Returns the streams, each with its loss the weighted mean
        sum_i w_i l_i / W_s, and the stream totals W_s (global; they sum to 1),
        which become the stream's mixing weight.
        """
        if self._num_replicas() > 1:
            raise NotImplementedError(
                "mixing='example_reweighting' runs on one device only (its collectives "
                "mismatch across replicas under tf.distribute): train it with "
                "train.distribute='none', or use another method under a strategy."
            )
        _, target_grads, _ = self._stream_gradients(target_x, target_y, None, 0)
        epsilons = [tf.zeros_like(y, dtype=tf.float32) for _, y, _ in streams]
        with tf.GradientTape() as outer:
            outer.watch(epsilons)
            with tf.GradientTape() as inner:
                total = 0.0
                for (x, y, _), head, eps in zip(streams, self._stream_head, epsilons):
                    logits = self.heads[head](self.trunk(x, training=True), training=True)
                    per_example = keras.losses.sparse_categorical_crossentropy(
                        y, keras.ops.cast(logits, "float32"), from_logits=True
                    )
                    total += tf.reduce_sum(eps * per_example)
            grads = inner.gradient(total, self._path_variables)
            alignment = tf.add_n(
                [
                    tf.reduce_sum(tf.cast(g, tf.float32) * tf.cast(t, tf.float32))
                    for g, t in zip(grads, target_grads)
                    if g is not None
                ]
            )
        alignments = outer.gradient(alignment, epsilons)
        alignments = [tf.zeros_like(e) if a is None else a for a, e in zip(alignments, epsilons)]
        # Rejected pseudo-labels stay out: only accepted examples can weigh > 0.
        alignments = [
            a if w is None else tf.where(w[1] > 0.0, a, tf.zeros_like(a))
            for a, (_, _, w) in zip(alignments, streams)
        ]
        positive_sum = tf.add_n([tf.reduce_sum(tf.nn.relu(a)) for a in alignments])
        example_weights = baselines.example_weights_from_alignment(
            alignments, self._all_reduce([positive_sum])[0]
        )
        totals = self._all_reduce([tf.reduce_sum(w) for w in example_weights])
        reweighted = [
            (x, y, (tf.math.divide_no_nan(w, total), None))
            for (x, y, _), w, total in zip(streams, example_weights, totals)
        ]
        return reweighted, totals

    def _lookahead_alignment(self, target_x, target_y, stream_grads):
        num_trunk = len(self.trunk.trainable_variables)
        trunk_state = [v.value for v in self.trunk.non_trainable_variables]
        head_state = [v.value for v in self.heads[0].non_trainable_variables]

        def target_loss(params):
            features, _ = self.trunk.stateless_call(
                params[:num_trunk], trunk_state, target_x, training=True
            )
            logits, _ = self.heads[0].stateless_call(params[num_trunk:], head_state, features)
            per_example = keras.losses.sparse_categorical_crossentropy(
                target_y, keras.ops.cast(logits, "float32"), from_logits=True
            )
            return self._scaled_mean(per_example, None)

        step_size = self.lookahead_step_size
        if step_size is None:
            step_size = self.optimizer.learning_rate
        init = tf.fill([len(stream_grads), len(self.mixing_layer_names)], self.lookahead_init)
        u, _ = lookahead.lookahead_alignment(
            target_loss,
            [v.value for v in self._path_variables],
            stream_grads,
            self._layer_ids,
            init,
            step_size,
        )
        return self._all_reduce([u])[0]

    def _update(self, mixed, head_grads, mixing_weights, rho):
        """Every state change of a step: r_t from rho_t (step 6), the optimizer step (7), w."""
        if self.adaptive_learning_rate:
            ema, steps, rho_mean = adaptive_lr.update_running_mean(
                self.rho_ema, self.rho_steps, rho, self.rho_decay
            )
            self.rho_ema.assign(ema)
            self.rho_steps.assign(steps)
            self.learning_rate_ratio.assign(
                adaptive_lr.learning_rate_ratio(rho, rho_mean, self.r_min, self.r_max)
            )
        grads, variables = self._with_source_heads(mixed, head_grads)
        # All made in this branch of the `tf.cond`: the optimizer's all-reduce fails
        # on a mix of outer tensors and branch tensors (a head shared by two sources).
        grads = [tf.identity(g) for g in grads]
        optimizer = self._loss_scale_optimizer()
        if optimizer is not None:  # it unscales them again (a power of 2: exact)
            grads = [g * optimizer.dynamic_scale for g in grads]
        self.optimizer.apply(grads, variables)
        self.mixing_weights.assign(mixing_weights)

    def _with_source_heads(self, mixed, head_grads):
        """Appends each source head's plain gradient (summed over its streams)."""
        grads, variables = list(mixed), list(self._path_variables)
        for head in sorted(set(self._stream_head) - {0}):
            own = [g for g, h in zip(head_grads, self._stream_head) if h == head]
            grads += [tf.add_n(list(parts)) for parts in zip(*own)]
            variables += self.heads[head].trainable_variables
        return grads, variables

    # --------------------------------------------------------------- numerics
    def _nonfinite_streams(self, losses, stream_grads):
        """[S + 1] bool: the streams (then the target) with a NaN/Inf loss or gradient.

        One `is_finite` on each loss and on each stream's summed squared
        gradient (NaN and Inf propagate into the sum; a sum that overflows
        float32 would break the mixing and the optimizer's state as well).
        All-reduced, so that every replica takes the same decision.
        """
        finite = []
        for loss, grads in zip(losses, stream_grads):
            if self._loss_scale_optimizer() is not None:  # gradients: `_loss_scale_overflow`
                finite.append(tf.math.is_finite(loss))
                continue
            squares = tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, tf.float32))) for g in grads])
            finite.append(tf.math.is_finite(loss) & tf.math.is_finite(squares))
        nonfinite = tf.cast(tf.logical_not(tf.stack(finite)), tf.float32)
        return self._all_reduce([nonfinite])[0] > 0.0

    def _update_if_finite(self, nonfinite, update_args):
        """`_update(*update_args)` if no stream is flagged, else stop or skip.

        Under a strategy that synchronises replicas with `merge_call`
        (MirroredStrategy), a `tf.cond` around the optimizer step must run in
        cross-replica context (as Keras's `LossScaleOptimizer` does).
        """
        overflow = self._loss_scale_overflow(update_args[0], update_args[1])
        if not tf.distribute.has_strategy() or (
            tf.__internal__.distribute.strategy_supports_no_merge_call()
        ):
            tf.cond(
                tf.reduce_any(nonfinite),
                lambda: self._on_nonfinite(nonfinite),
                lambda: self._unless_overflow(overflow, lambda: self._update(*update_args)),
            )
            return

        def cross_replica(strategy, nonfinite, overflow, update_args):
            nonfinite = strategy.experimental_local_results(nonfinite)[0]  # same everywhere
            overflow = strategy.experimental_local_results(overflow)[0]

            def update():
                strategy.extended.call_for_each_replica(self._update, update_args)

            tf.cond(
                tf.reduce_any(nonfinite),
                lambda: self._on_nonfinite(nonfinite),
                lambda: self._unless_overflow(overflow, update),
            )

        tf.distribute.get_replica_context().merge_call(
            cross_replica, args=(nonfinite, overflow, update_args)
        )

    # -------------------------------------------------------- mixed precision
    def _loss_scale_optimizer(self):
        """The `LossScaleOptimizer` (`mixed_float16`), or None."""
        optimizer = getattr(self, "optimizer", None)
        return optimizer if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else None

    def _loss_scale(self):
        """The loss scale the backward pass starts from (None: 1)."""
        optimizer = self._loss_scale_optimizer()
        return None if optimizer is None else tf.cast(optimizer.dynamic_scale, tf.float32)

    def _unscale(self, grads):
        """Gradients of a scaled loss -> float32 gradients of the loss."""
        optimizer = self._loss_scale_optimizer()
        if optimizer is None:
            return grads
        scale = tf.cast(optimizer.dynamic_scale, tf.float32)
        return [tf.cast(g, tf.float32) / scale for g in grads]

    def _loss_scale_overflow(self, mixed, head_grads):
        """Whether a gradient overflowed under loss scaling (all replicas); None without."""
        if self._loss_scale_optimizer() is None:
            return None
        grads = list(mixed) + [g for grads in head_grads for g in grads]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        return self._all_reduce([tf.cast(tf.logical_not(finite), tf.float32)])[0] > 0.0

    def _unless_overflow(self, overflow, update):
        """`update()`, or, on a loss-scale overflow, halve the scale and skip."""
        if overflow is None:
            return update()
        optimizer = self._loss_scale_optimizer()

        def lower_the_scale():
            optimizer.step_counter.assign(0)
            optimizer.dynamic_scale.assign(optimizer.dynamic_scale * 0.5)
            self.nonfinite_skipped.assign_add(1)

        tf.cond(overflow, lower_the_scale, update)

    def _skips_nonfinite(self) -> bool:
        return self.on_nonfinite == "skip" or bool(self.jit_compile)  # XLA drops asserts

    def _on_nonfinite(self, nonfinite):
        """Counts a skipped batch, or stops the run saying where and what to do."""
        if self._skips_nonfinite():
            self.nonfinite_skipped.assign_add(1)
            return
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
        tf.debugging.Assert(False, [message])

    def _train_logs(self, target_loss, losses, mixing_weights, rho):
        logs = {"loss": target_loss, "loss/target": target_loss}
        mean_weights = tf.reduce_mean(mixing_weights, axis=1)  # [S]
        for s, name in enumerate(self.stream_names):
            logs[f"loss/{name}"] = losses[s]
            logs[f"mixing_weight/{name}"] = mean_weights[s]
        logs["rho"] = rho
        logs["learning_rate_ratio"] = self.learning_rate_ratio.value
        if self._skips_nonfinite():
            logs["nonfinite_skipped"] = self.nonfinite_skipped.value
        if self.num_unlabelled:
            logs["pseudo_labels/acceptance"] = self.pseudo_label_acceptance.value
            logs["pseudo_labels/precision"] = self.pseudo_label_precision.value
        return _reducible_logs(logs)

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

    def _num_replicas(self) -> int:
        return tf.distribute.get_strategy().num_replicas_in_sync

    def _all_reduce(self, tensors):
        if self._num_replicas() == 1:
            return list(tensors)
        context = tf.distribute.get_replica_context()
        return context.all_reduce(tf.distribute.ReduceOp.SUM, list(tensors))

    # -------------------------------------------------------------- evaluation
    def test_step(self, data):
        x, y = data[:2] if isinstance(data, tuple) else (data["image"], data["label"])
        probabilities = self(x, training=False)
        self.test_loss.update_state(keras.losses.sparse_categorical_crossentropy(y, probabilities))
        self.test_accuracy.update_state(y, probabilities)
        return _reducible_logs(
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
            share_target_head=self.share_target_head,
            mixing=self.mixing,
            weight_solver=self.weight_solver,
            alignment=self.alignment,
            granularity=self.granularity,
            normalization=self.normalization,
            weight_total=self.weight_total,
            target_weight=self.target_weight,
            lookahead_init=self.lookahead_init,
            lookahead_step_size=self.lookahead_step_size,
            adaptive_learning_rate=self.adaptive_learning_rate,
            rho_decay=self.rho_decay,
            r_min=self.r_min,
            r_max=self.r_max,
            num_unlabelled=self.num_unlabelled,
            pseudo_label_confidence_weights=self.pseudo_label_confidence_weights,
            on_nonfinite=self.on_nonfinite,
            pretrain_steps=self.pretrain_steps,
            jit_mixing_weights=self.jit_mixing_weights,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["trunk"] = keras.saving.deserialize_keras_object(config["trunk"])
        return cls(**config)
