"""`LabelAdapter`: a source's label relation to the target's classes.

A source whose classes are (some of) the target's predicts through the target
head h_T instead of a head of its own: its prediction is

    p_s(j | x) = sum_i q(i | x) M_s[i, j],    M_s = softmax(A_s, axis=1)  [C_T, C_s]

with q the target head's class probabilities, and M_s[i, j] the probability
that the source labels an example of target class i as its class j (a
row-stochastic matrix, learned from the source's loss: a noise-adaptation or
"crowd" layer; Sukhbaatar et al. 2015, Rodrigues & Pereira 2018). Target
classes the source does not have (no class of the source is matched to them)
are either kept, with a uniform row to start (`absent_rows="uniform"`: the
source says such a class is none of its own), or masked out of q
(`absent_rows="masked"`: q is h_T's distribution given that the example is one
of the source's classes).

The relation starts at the class-name match (`start="name_match"`: A_s[i, j] =
`strength` where source class j names target class i, 0 elsewhere), uniform
(`start="uniform"`: A_s = 0), or is set later from an estimate
(`assign_relation`, `gradmix_tf.callbacks.label_relations`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

STARTS = ("name_match", "uniform", "estimate")
ESTIMATES = ("target_head", "source_head")  # `callbacks.label_relations`
ABSENT_ROWS = ("uniform", "masked")
_MASKED = -1e9  # log q of a masked class: exp() is exactly 0 in float32


def matched_classes(
    target_class_names: Sequence[str],
    source_class_names: Sequence[str],
    relation: Mapping[str, str] | None = None,
) -> np.ndarray:
    """[C_s] the target class each source class names (-1 for none).

    By name, or by `relation` (source class name -> target class name) where it
    names the source class.

    Raises:
        ValueError: `relation` names a class that the source or the target lacks.
    """
    target_index = {str(name): i for i, name in enumerate(target_class_names)}
    source_names = [str(name) for name in source_class_names]
    relation = {str(k): str(v) for k, v in (relation or {}).items()}
    for source_name, target_name in relation.items():
        if source_name not in source_names:
            raise ValueError(
                f"the label relation names source class {source_name!r}, which the source "
                f"does not have (its classes: {source_names})."
            )
        if target_name not in target_index:
            raise ValueError(
                f"the label relation maps {source_name!r} to {target_name!r}, which is not a "
                f"target class (the target's: {list(target_index)})."
            )
    return np.asarray(
        [target_index.get(relation.get(name, name), -1) for name in source_names], np.int64
    )


def name_match_relation(matches: np.ndarray, num_target_classes: int, strength: float):
    """[C_T, C_s] the logits A_s of the name match: `strength` on each matched pair."""
    logits = np.zeros([num_target_classes, len(matches)], np.float32)
    for j, i in enumerate(matches):
        if i >= 0:
            logits[i, j] = strength
    return logits


@keras.saving.register_keras_serializable(package="gradmix_tf")
class LabelAdapter(keras.Layer):
    """The label relation M_s of one source to the target's classes (module docstring).

    `call(target_logits)` gives the source's log-probabilities [B, C_s] from the
    target head's logits [B, C_T]; `loss(labels, target_logits)` the per-example
    negative log-likelihood of the source's labels (plus `trace_penalty` times
    the mean of M_s's diagonal over the matched classes, Tanno et al. 2019: a
    push towards a relation that explains the labels as noise rather than
    bending h_T).

    Args:
        matches: [C_s] the target class each source class names, -1 for none
            (`matched_classes`).
        num_target_classes: C_T.
        start: "name_match", "uniform" or "estimate" (set later; starts uniform).
        strength: the name match's logit (`start="name_match"`).
        absent_rows: "uniform" or "masked", for target classes no source class names.
        trace_penalty: the weight of the trace penalty (0: none).
        learning_rate_scale: A_s is stored divided by this, so that an optimizer
            whose steps do not depend on the gradient's scale (Adam) moves it this
            many times faster than the other weights.
    """

    def __init__(
        self,
        matches: Sequence[int],
        num_target_classes: int,
        start: str = "name_match",
        strength: float = 4.0,
        absent_rows: str = "uniform",
        trace_penalty: float = 0.0,
        learning_rate_scale: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.matches = tuple(int(i) for i in matches)
        self.num_target_classes = int(num_target_classes)
        if not any(i >= 0 for i in self.matches):
            raise ValueError("a label adapter needs at least one source class matched.")
        self.start = start
        self.strength = float(strength)
        self.absent_rows = absent_rows
        self.trace_penalty = float(trace_penalty)
        self.learning_rate_scale = float(learning_rate_scale)
        if not self.learning_rate_scale > 0:
            raise ValueError(f"learning_rate_scale must be > 0, got {learning_rate_scale}.")
        present = np.zeros([self.num_target_classes], np.float32)
        present[[i for i in self.matches if i >= 0]] = 1.0
        self._present = present

    @property
    def num_source_classes(self) -> int:
        return len(self.matches)

    def build(self, input_shape=None):
        strength = self.strength if self.start == "name_match" else 0.0
        initial = name_match_relation(np.asarray(self.matches), self.num_target_classes, strength)
        self.relation_logits = self.add_weight(
            shape=initial.shape,
            initializer=keras.initializers.Constant(initial / self.learning_rate_scale),
            name="relation_logits",
        )
        self.built = True

    def log_relation(self):
        """[C_T, C_s] log M_s (float32)."""
        logits = tf.cast(self.relation_logits, tf.float32) * self.learning_rate_scale
        return tf.nn.log_softmax(logits, axis=1)

    def relation(self) -> np.ndarray:
        """M_s as a numpy array [C_T, C_s]."""
        return tf.exp(self.log_relation()).numpy()

    def assign_relation(self, relation):
        """Sets M_s (rows normalised; a row of zeros becomes uniform)."""
        relation = np.asarray(relation, np.float64)
        relation = relation / np.maximum(relation.sum(axis=1, keepdims=True), 1e-12)
        relation = np.where(relation.sum(axis=1, keepdims=True) > 0, relation, 1.0)
        logits = np.log(np.maximum(relation, 1e-6))
        logits -= logits.max(axis=1, keepdims=True)
        self.relation_logits.assign(logits / self.learning_rate_scale)

    def call(self, target_logits):
        log_q = tf.cast(target_logits, tf.float32)
        if self.absent_rows == "masked":
            log_q += tf.constant(np.where(self._present > 0, 0.0, _MASKED), tf.float32)
        log_q = tf.nn.log_softmax(log_q, axis=-1)  # [B, C_T]
        # log p_s(j | x) = logsumexp_i (log q_i + log M[i, j])  [B, C_s]
        return tf.reduce_logsumexp(log_q[:, :, None] + self.log_relation()[None], axis=1)

    def loss(self, labels, target_logits):
        """[B] the negative log-likelihood of the source labels, through M_s."""
        log_probabilities = self(target_logits)
        labels = tf.cast(labels, tf.int32)
        nll = -tf.gather(log_probabilities, labels, axis=1, batch_dims=1)
        if self.trace_penalty:
            nll += self.trace_penalty * self.matched_trace()
        return nll

    def matched_trace(self):
        """The mean of M_s[i, j] over the matched pairs (i, j) (1 for the name match)."""
        pairs = [(i, j) for j, i in enumerate(self.matches) if i >= 0]
        return tf.reduce_mean(tf.gather_nd(tf.exp(self.log_relation()), pairs))

    def get_config(self):
        config = super().get_config()
        config.update(
            matches=list(self.matches),
            num_target_classes=self.num_target_classes,
            start=self.start,
            strength=self.strength,
            absent_rows=self.absent_rows,
            trace_penalty=self.trace_penalty,
            learning_rate_scale=self.learning_rate_scale,
        )
        return config
