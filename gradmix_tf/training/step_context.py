"""What the helpers of a training step read, in place of the model.

A GradMix step is `GradMixModel.train_step` and a few helpers: the passes that
take the streams' gradients (`training.stream_passes`, `training.one_pass`), the
mixing rule (`gradmix_tf.rules`) and the guard against non-finite batches
(`training.step_guard`). None of them is handed the model. They read:

- a `StreamNetwork`: the trunk, the heads and the label adapters, with each
  stream's loss and its gradients on the target's path and on its own head;
- a `StepContext`, made by the model for each traced step: the network, the
  guard (the optimizer, loss scaling, non-finite checks) and the mixing layers
  (the layer id of each path variable, L).

Each can be made from a few Keras layers and tested without a `GradMixModel`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import tensorflow as tf

from gradmix_tf import distribute
from gradmix_tf.rules import StreamBatch
from gradmix_tf.training.step_guard import StepGuard


def cross_entropy(labels, logits):
    """[B] per-example sparse cross-entropy of logits (computed in float32)."""
    return keras.losses.sparse_categorical_crossentropy(
        labels, keras.ops.cast(logits, "float32"), from_logits=True
    )


def scaled_mean(per_example, batch: StreamBatch):
    """The (weighted) mean over the GLOBAL batch, so replicas' gradients sum to it."""
    if batch.example_weights is None:
        count = tf.cast(tf.shape(per_example)[0], tf.float32) * distribute.num_replicas()
        return tf.reduce_sum(per_example) / count
    if batch.accepted is None:  # weights that sum to 1 over the global batch
        return tf.reduce_sum(tf.stop_gradient(batch.example_weights) * per_example)
    count = tf.maximum(distribute.all_reduce_sum([tf.reduce_sum(batch.accepted)])[0], 1.0)
    return tf.reduce_sum(batch.example_weights * per_example) / count


class StreamNetwork:
    """The layers a step trains, and each stream's loss through them.

    Args:
        trunk: the shared trunk f_theta.
        heads: the heads; `heads[0]` is the target head h_T.
        label_adapters: the sources' label adapters (`networks.label_adapter`).
        adapters_active: a variable, 1 once the label adapters are in use (before,
            a source with an adapter trains on its own head); None without adapters.

    The layers are built: the target's path (`path_variables`: the trunk's and
    h_T's trainable variables) is fixed here, as the mixing layers are.
    """

    def __init__(
        self,
        trunk: keras.Layer,
        heads: Sequence[keras.Layer],
        label_adapters: Sequence = (),
        adapters_active=None,
    ):
        self.trunk = trunk
        self.heads = list(heads)
        self.label_adapters = list(label_adapters)
        self.adapters_active = adapters_active
        self.path_variables = list(trunk.trainable_variables) + list(
            self.heads[0].trainable_variables
        )

    def per_example_loss(self, batch: StreamBatch):
        """[B] the cross-entropy of each example in its stream's head (training mode); a
        stream with a label adapter predicts through h_T and the adapter (while the adapters
        are not active yet, through its own head)."""
        return self.head_loss(batch, self.trunk(batch.x, training=True))

    def head_loss(self, batch: StreamBatch, features):
        """[B] `per_example_loss` from the trunk's features of the batch."""
        if batch.adapter is None:
            return cross_entropy(batch.labels, self.heads[batch.head](features, training=True))
        target_logits = self.heads[0](features, training=True)
        through_target = self.label_adapters[batch.adapter].loss(batch.labels, target_logits)
        if not batch.head:
            return through_target
        own = cross_entropy(batch.labels, self.heads[batch.head](features, training=True))
        active = self.adapters_active.value
        return active * through_target + (1.0 - active) * own

    def own_variables(self, head: int, adapter: int | None) -> list:
        """The trainable variables only a stream's own loss trains: its head `head` (unless
        h_T) and its label adapter `adapter`."""
        own = list(self.heads[head].trainable_variables) if head else []
        if adapter is not None:
            own += self.label_adapters[adapter].trainable_variables
        return own

    def layer_states(self, head: int):
        """(trunk, head) non-trainable values as they are now (batch-norm statistics, random
        seeds; read, not the variables, which later passes change)."""
        return (
            [tf.identity(v.value) for v in self.trunk.non_trainable_variables],
            [tf.identity(v.value) for v in self.heads[head].non_trainable_variables],
        )

    def restore_layer_states(self, head: int, state):
        """Sets the (trunk, head) non-trainable values to `state` (`layer_states`)."""
        trunk_state, head_state = state
        variables = self.trunk.non_trainable_variables + self.heads[head].non_trainable_variables
        for variable, value in zip(variables, [*trunk_state, *head_state]):
            variable.assign(value)

    def stateless_target_loss(self, target: StreamBatch):
        """The labelled target loss as a function of the target path's values (for a
        look-ahead, through `stateless_call`)."""
        num_trunk = len(self.trunk.trainable_variables)
        trunk_state = [v.value for v in self.trunk.non_trainable_variables]
        head_state = [v.value for v in self.heads[0].non_trainable_variables]

        def target_loss(params):
            features, _ = self.trunk.stateless_call(
                params[:num_trunk], trunk_state, target.x, training=True
            )
            logits, _ = self.heads[0].stateless_call(params[num_trunk:], head_state, features)
            return scaled_mean(cross_entropy(target.labels, logits), target)

        return target_loss


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What one training step's helpers read (module docstring).

    Attributes:
        network: the `StreamNetwork`.
        guard: the step's `StepGuard` (loss scaling, non-finite checks).
        mixing_layer_ids: the mixing layer (or group) of each path variable, [V].
        num_mixing_layers: L.
    """

    network: StreamNetwork
    guard: StepGuard
    mixing_layer_ids: tuple
    num_mixing_layers: int

    @property
    def path_variables(self) -> list:
        """The target's path (`StreamNetwork.path_variables`)."""
        return self.network.path_variables

    @property
    def learning_rate(self):
        """The optimizer's current learning rate (a look-ahead's step size)."""
        return self.guard.optimizer.learning_rate

    @property
    def iterations(self):
        """The optimizer's step counter (when pre-training turns to fine-tuning)."""
        return self.guard.optimizer.iterations

    def stream_gradients(self, batch: StreamBatch, state=None):
        """(loss, gradients on the target's path [V], on the stream's own head).

        The loss is the global-batch mean (times the replicas, for logs);
        gradients are float32 and zeros where the stream has none (never None).
        With `state` (`StreamNetwork.layer_states`, read before an earlier pass on the
        same batch), the trunk and head start from it: the pass repeats that one (its
        batch statistics, dropout masks and state updates).
        """
        network, guard = self.network, self.guard
        if state is not None:
            network.restore_layer_states(batch.head, state)
        own_variables = network.own_variables(batch.head, batch.adapter)
        path_variables = network.path_variables
        with tf.GradientTape() as tape:
            loss = scaled_mean(network.per_example_loss(batch), batch)
            scaled_loss = guard.scale_loss(loss)
        variables = path_variables + own_variables
        grads = tape.gradient(scaled_loss, variables)
        # A stream with its own head has no gradient on h_T: zeros, not None; an
        # embedding's sparse gradient dense, as the products and the mix read it.
        grads = [
            tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
            for g, v in zip(grads, variables)
        ]
        grads = guard.unscale(grads)
        num_path = len(path_variables)
        return loss * distribute.num_replicas(), grads[:num_path], grads[num_path:]
