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
        ratio: a scalar (non-trainable) variable holding r_t.
    """

    def __init__(self, base, ratio):
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
        return base * keras.ops.cast(self.ratio, "float32")

    def get_config(self):
        base = self.base
        if isinstance(base, keras.Variable):
            base = float(keras.ops.convert_to_numpy(base))
        elif isinstance(base, keras.optimizers.schedules.LearningRateSchedule):
            base = keras.optimizers.schedules.serialize(base)
        return {"base": base}


def attach_adaptive_learning_rate(optimizer, ratio) -> AdaptiveLearningRate:
    """Replaces `optimizer`'s learning rate by `AdaptiveLearningRate(lr, ratio)`.

    Idempotent: an optimizer already wrapped gets its ratio variable swapped.
    """
    current = optimizer._learning_rate  # the user's float variable or schedule
    if isinstance(current, AdaptiveLearningRate):
        current = current.base
    schedule = AdaptiveLearningRate(current, ratio)
    optimizer.learning_rate = schedule
    return schedule
