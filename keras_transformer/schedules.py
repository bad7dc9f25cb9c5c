"""The learning-rate schedule and optimizer of §5.3."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_transformer")
class InverseSqrtSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """lrate = scale · d_model^-0.5 · min(step^-0.5, step · warmup_steps^-1.5).

    Linear warm-up for `warmup_steps`, then decay with the inverse square root of the
    step number (eq. 3). `step` counts from 1; `scale` is 1 in the paper.

    Example:
    >>> schedule = InverseSqrtSchedule(d_model=512, warmup_steps=4000)
    >>> round(float(schedule(3999)), 6)  # the peak, at step 4000
    0.000699
    """

    def __init__(self, d_model, warmup_steps=4000, scale=1.0):
        self.d_model = d_model
        self.warmup_steps = warmup_steps
        self.scale = scale

    def __call__(self, iteration):
        step = ops.cast(iteration, "float32") + 1.0
        warmup = ops.minimum(ops.rsqrt(step), step * float(self.warmup_steps) ** -1.5)
        return self.scale * float(self.d_model) ** -0.5 * warmup

    def get_config(self):
        return {"d_model": self.d_model, "warmup_steps": self.warmup_steps, "scale": self.scale}


def paper_optimizer(d_model, warmup_steps=4000, scale=1.0, **kwargs):
    """Adam(β₁=0.9, β₂=0.98, ε=1e-9) on the warm-up / inverse-sqrt schedule."""
    return keras.optimizers.Adam(
        learning_rate=InverseSqrtSchedule(d_model, warmup_steps, scale),
        beta_1=0.9, beta_2=0.98, epsilon=1e-9, **kwargs,
    )
