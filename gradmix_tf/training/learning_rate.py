"""Makes the adaptive learning-rate ratio r_t change the real step size.

Scaling gradients would not do it: Adam, RMSprop and friends renormalise
gradients, so a scaled gradient gives (nearly) the same step. Instead the
optimizer's own learning rate becomes `schedule(t) * r_t`, with r_t read from
a variable that `GradMixModel.train_step` sets before `optimizer.apply`. This
works for every Keras optimizer, whatever its update rule.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="gradmix_tf")
class AdaptiveLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """`base(step) * ratio`: a learning rate that follows a ratio variable.

    Args:
        base: the user's learning rate: a float, a Keras variable or a
            `LearningRateSchedule`.
        ratio: a scalar (non-trainable) variable holding r_t; None (a
            schedule deserialised from a saved optimizer, until
            `with_adaptive_learning_rate` gives it the model's ratio) means 1.
    """

    def __init__(self, base, ratio=None):
        self.base = base
        self.ratio = ratio

    def base_learning_rate(self, step):
        if isinstance(self.base, keras.optimizers.schedules.LearningRateSchedule):
            return self.base(step)
        if callable(self.base) and not isinstance(self.base, keras.Variable):
            return self.base()
        return keras.ops.convert_to_tensor(self.base)

    def __call__(self, step):
        base = keras.ops.cast(self.base_learning_rate(step), "float32")
        if self.ratio is None:
            return base
        return base * keras.ops.cast(self.ratio, "float32")

    def get_config(self):
        base = self.base
        if isinstance(base, keras.Variable):
            base = float(keras.ops.convert_to_numpy(base))
        elif isinstance(base, keras.optimizers.schedules.LearningRateSchedule):
            base = keras.optimizers.schedules.serialize(base)
        return {"base": base}

    @classmethod
    def from_config(cls, config):
        """The schedule without its ratio (a model variable, not part of the config)."""
        base = config["base"]
        if isinstance(base, dict):
            base = keras.optimizers.schedules.deserialize(base)
        return cls(base)


def with_adaptive_learning_rate(optimizer, ratio):
    """A copy of `optimizer` whose learning rate is `AdaptiveLearningRate(lr, ratio)`.

    The optimizer is rebuilt from its config rather than patched: Keras's
    learning-rate setter untracks the old variable, which `tf.train.Checkpoint`
    then refuses to save. Call it before the optimizer is built.
    """
    optimizer = keras.optimizers.get(optimizer)
    config = optimizer.get_config()
    base = config["learning_rate"]
    if isinstance(base, dict):
        base = keras.optimizers.schedules.deserialize(base)
    if isinstance(base, AdaptiveLearningRate):
        base = base.base
    config["learning_rate"] = AdaptiveLearningRate(base, ratio)
    return optimizer.__class__.from_config(config)
