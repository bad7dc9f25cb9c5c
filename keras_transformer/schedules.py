"""The learning-rate schedule and optimizer of §5.3, and a cosine variant for fixed budgets."""

import math

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


def peak_learning_rate(d_model, warmup_steps, scale=1.0):
    """The paper schedule's rate at the end of warm-up: scale · d_model^-0.5 · warmup^-0.5."""
    return scale * float(d_model) ** -0.5 * float(warmup_steps) ** -0.5


@keras.saving.register_keras_serializable(package="keras_transformer")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """A line from 0 up to `peak` over `warmup_steps`, then half a cosine down to zero at
    `total_steps`; zero after it.

    The end lives in a variable, so `set_total_steps` moves it while a compiled train step
    keeps running, without a retrace: a run with a time budget re-plans its end from the
    pace it measures (`training.schedule_to_budget`). The rate is read before each update
    (`iteration` counts the updates done), as Keras' `CosineDecay` reads it.

    Example:
    >>> schedule = WarmupCosineDecay(1e-3, warmup_steps=100, total_steps=1100)
    >>> [round(float(schedule(step)), 6) for step in (50, 100, 600, 1100)]
    [0.0005, 0.001, 0.0005, 0.0]
    >>> schedule.set_total_steps(600)
    >>> round(float(schedule(350)), 6)
    0.0005
    """

    def __init__(self, peak, warmup_steps, total_steps):
        if not total_steps or total_steps <= warmup_steps:
            raise ValueError(f"a cosine decay needs total_steps > warmup_steps "
                             f"({warmup_steps}), got {total_steps}")
        self.peak, self.warmup_steps = float(peak), int(warmup_steps)
        self.total_steps = keras.Variable(float(total_steps), trainable=False,
                                          dtype="float32", name="cosine_total_steps")

    def set_total_steps(self, total_steps):
        """End the decay at update `total_steps` (kept past the warm-up)."""
        self.total_steps.assign(float(max(total_steps, self.warmup_steps + 1)))

    def __call__(self, iteration):
        step = ops.cast(iteration, "float32")
        warmup = float(self.warmup_steps)
        done = ops.clip((step - warmup) / (self.total_steps - warmup), 0.0, 1.0)
        cosine = 0.5 * self.peak * (1.0 + ops.cos(math.pi * done))
        return ops.where(step < warmup, self.peak * step / warmup, cosine)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": int(self.total_steps.numpy())}


def cosine_schedule(optimizer):
    """The `WarmupCosineDecay` an optimizer follows, or None (a loss-scale wrapper is looked
    through). Keras keeps the schedule object only in the private `_learning_rate`; the
    public `learning_rate` is its current value."""
    schedule = getattr(getattr(optimizer, "inner_optimizer", optimizer), "_learning_rate", None)
    return schedule if isinstance(schedule, WarmupCosineDecay) else None


def learning_rate_schedule(d_model, warmup_steps=4000, scale=1.0, decay="inverse_sqrt",
                           total_steps=None):
    """The warm-up schedule with the paper's decay or a cosine decay to zero.

    Both warm up linearly to the same peak (`peak_learning_rate`), so `scale` means the
    same for either. `decay="inverse_sqrt"` is eq. 3; `decay="cosine"` is
    `WarmupCosineDecay`, reaching zero once `total_steps` updates (all of the run's) are
    done: a run whose length is known in advance ends on small steps instead of on the
    inverse-sqrt tail (training/results/sweep/ compares the two). Its warm-up line starts
    at 0 (the rate is read before each update), one update behind eq. 3's.

    Example:
    >>> schedule = learning_rate_schedule(128, 600, 0.5, "cosine", total_steps=3000)
    >>> round(float(schedule(600)), 6), float(schedule(3000))
    (0.001804, 0.0)
    """
    if decay == "inverse_sqrt":
        return InverseSqrtSchedule(d_model, warmup_steps, scale)
    if decay != "cosine":
        raise ValueError(f"decay must be inverse_sqrt or cosine, not {decay!r}")
    return WarmupCosineDecay(peak_learning_rate(d_model, warmup_steps, scale), warmup_steps,
                             total_steps)


# Substrings of the variable names weight decay leaves alone: biases and the layer norms'
# offsets and scales (keras.layers.LayerNormalization's beta and gamma).
NO_WEIGHT_DECAY = ("bias", "beta", "gamma")


def paper_optimizer(d_model, warmup_steps=4000, scale=1.0, decay="inverse_sqrt",
                    total_steps=None, weight_decay=0.0, **kwargs):
    """Adam(β₁=0.9, β₂=0.98, ε=1e-9) on the warm-up schedule (`learning_rate_schedule`).

    `weight_decay` > 0 adds decoupled weight decay (Loshchilov & Hutter, 2019; not in the
    paper): after each update every weight matrix and the embeddings shrink by the factor
    1 - weight_decay x the current learning rate, apart from the Adam step, so the decay
    follows the schedule and vanishes with it. Biases and layer-norm parameters
    (`NO_WEIGHT_DECAY`) are not decayed.

    Example:
    >>> optimizer = paper_optimizer(128, 600, 0.5, "cosine", total_steps=3000, weight_decay=0.1)
    >>> kernel, bias = keras.Variable([[1.0]], name="kernel"), keras.Variable([1.0], name="bias")
    >>> optimizer.apply([keras.ops.zeros((1, 1)), keras.ops.zeros((1,))], [kernel, bias])
    >>> _ = optimizer.iterations.assign(600)  # the peak rate, 1.8e-3
    >>> optimizer.apply([keras.ops.zeros((1, 1)), keras.ops.zeros((1,))], [kernel, bias])
    >>> round(float(kernel[0, 0]), 6), float(bias[0])  # 1 - 0.1 x 1.804e-3; the bias kept
    (0.99982, 1.0)
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, not {weight_decay!r}")
    optimizer = keras.optimizers.Adam(
        learning_rate=learning_rate_schedule(d_model, warmup_steps, scale, decay, total_steps),
        beta_1=0.9, beta_2=0.98, epsilon=1e-9, weight_decay=weight_decay or None, **kwargs,
    )
    if weight_decay:
        optimizer.exclude_from_weight_decay(var_names=list(NO_WEIGHT_DECAY))
    return optimizer
