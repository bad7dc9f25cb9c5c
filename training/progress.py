"""What a run tells its user while `fit` runs: the plan, the time an epoch takes, and
when a time budget stops it; and, with `training.schedule_to_budget`, where in the budget
the learning rate reaches zero.

The plan, the budget and the budgeted decay share one clock, `EpochClock`, which times
every batch.
"""

import statistics
import time

import keras

# A batch that takes more than this many times the epoch's median is a one-off
# (tracing + XLA compilation of a new length bucket, ~5-10 s against ~0.4 s a step
# in the main job); a steady epoch will not repeat it.
_ONE_OFF = 3.0


def steady_seconds(durations):
    """Seconds a pass over these batches takes once compiled: each batch slower than
    `_ONE_OFF` x the median counts as the median.

    >>> steady_seconds([9.0, 0.5, 0.4, 0.5, 6.0, 0.5])
    2.9
    """
    if not durations:
        return 0.0
    median = statistics.median(durations)
    return round(sum(d if d <= _ONE_OFF * median else median for d in durations), 6)


class EpochClock(keras.callbacks.Callback):
    """Times every training and validation batch of each epoch.

    `epoch_seconds` holds the wall time of each epoch, `validation_seconds` the last
    validation pass; `steady_epoch_seconds()` is the time the last epoch would have taken
    without its one-off compilations (training batches + validation batches + what lies
    outside both, e.g. epoch-end callbacks). Put it first in the callback list so the
    others read this epoch's figures.
    """

    def __init__(self):
        super().__init__()
        self.epoch_seconds = []
        self.steps = 0  # training batches in this `fit`
        self.validation_seconds = 0.0  # the last validation pass
        self._batches = {"train": [], "test": []}
        self._epoch_started = self._last = None

    def _tick(self, kind):
        now = time.time()
        self._batches[kind].append(now - self._last)
        self._last = now

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = self._last = time.time()
        self._batches = {"train": [], "test": []}

    def on_train_batch_end(self, batch, logs=None):
        self._tick("train")
        self.steps += 1

    def on_test_begin(self, logs=None):
        self._last = time.time()

    def on_test_batch_end(self, batch, logs=None):
        self._tick("test")

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(round(time.time() - self._epoch_started, 1))
        if self._batches["test"]:
            self.validation_seconds = sum(self._batches["test"])

    def batches(self, kind):
        """Seconds each "train" or "test" batch of the last epoch took."""
        return list(self._batches[kind])

    def steady_epoch_seconds(self):
        measured = sum(sum(b) for b in self._batches.values())
        other = max(0.0, self.epoch_seconds[-1] - measured)
        return sum(steady_seconds(b) for b in self._batches.values()) + other


class TrainingPlan(keras.callbacks.Callback):
    """Prints the plan before the first step and a time estimate after the first epoch."""

    def __init__(self, clock, epochs, steps_per_epoch, tokens_per_epoch, precision,
                 budget=None, to_budget=False):
        super().__init__()
        self.clock, self.budget, self.to_budget = clock, budget, to_budget
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.tokens_per_epoch, self.precision = tokens_per_epoch, precision
        self.first_epoch = None

    def on_train_begin(self, logs=None):
        tokens = (f"{self.tokens_per_epoch:,} target tokens an epoch" if self.tokens_per_epoch
                  else "epochs of a fixed step count")
        print(f"plan: {'at most ' if self.to_budget else ''}{self.epochs} epochs x "
              f"{self.steps_per_epoch} steps ({self.epochs * self.steps_per_epoch} steps, "
              f"{tokens}), {self.precision}"
              + (f", at most {self.budget:g} min of training" if self.budget else "")
              + (", the learning rate decaying to zero as it ends" if self.to_budget else ""),
              flush=True)

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch = epoch
            if epoch:
                print(f"resuming at epoch {epoch + 1}", flush=True)

    def on_epoch_end(self, epoch, logs=None):
        if epoch != self.first_epoch or epoch + 1 >= self.epochs:
            return
        first, steady = self.clock.epoch_seconds[-1], self.clock.steady_epoch_seconds()
        left = self.epochs - epoch - 1
        line = (f"\nfirst epoch took {first:.0f} s, {first - steady:.0f} s of it tracing and "
                f"compiling; the next ones should take ~{steady:.0f} s: "
                f"~{left * steady / 60:.0f} min for the {left} left")
        if self.budget:
            line += f" (the {self.budget:g}-min budget stops it sooner)" if (
                first + left * steady > 60 * self.budget) else ""
        print(line, flush=True)


class TimeBudget(keras.callbacks.Callback):
    """Stops `fit` when `minutes` are used up, in the middle of an epoch if need be.

    It stops after the first training batch that leaves less time than the last
    validation pass took (that pass still runs, as at the end of every epoch). Waiting
    for whole epochs wasted up to one epoch of the budget: the quick demo stopped after
    3.9 of its 6.5 minutes because a second whole epoch would not have fitted.
    """

    def __init__(self, clock, minutes, used_seconds=0.0):
        super().__init__()
        self.clock, self.seconds = clock, 60 * minutes
        self.used_seconds = used_seconds  # by the runs of a resumed run before this one
        self.started = self.epoch = None
        self.stopped_after = None  # (epoch, step), 1-based, once stopped

    def on_train_begin(self, logs=None):
        self.started = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def elapsed(self):
        """Seconds of the budget used (by this run and the ones it resumes)."""
        return time.time() - self.started + self.used_seconds

    def seconds_left(self):
        """Seconds of training left before this stops `fit`."""
        return self.seconds - self.elapsed() - self.clock.validation_seconds

    def on_train_batch_end(self, batch, logs=None):
        if self.stopped_after or self.seconds_left() > 0:
            return
        elapsed = self.elapsed()
        self.model.stop_training = True
        self.stopped_after = (self.epoch + 1, batch + 1)
        print(f"\ntime budget: stopping in epoch {self.epoch + 1} after step {batch + 1} "
              f"({elapsed / 60:.1f} of {self.seconds / 60:g} min)", flush=True)


class BudgetedDecay(keras.callbacks.Callback):
    """Ends a cosine decay (`WarmupCosineDecay`) where the time budget ends.

    After every epoch it re-plans the schedule's last update: the updates done plus those
    the seconds left will hold at the pace measured so far (the median of this run's
    steady epochs, validation included, per training batch), never past `planned`
    updates. A fixed end either is cut by the budget at a high learning rate on a slower
    machine or leaves minutes of the budget unused on a faster one. It stops `fit` at the
    end, where the learning rate is zero. `ends` holds each epoch's plan.

    Example (a loop this small finishes long before its minute is up, so the plan keeps
    the `planned` 40 updates):
    >>> import numpy as np
    >>> from keras_transformer.schedules import WarmupCosineDecay
    >>> schedule = WarmupCosineDecay(1e-3, warmup_steps=4, total_steps=40)
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(keras.optimizers.Adam(schedule), "mse")
    >>> clock = EpochClock()
    >>> budget = TimeBudget(clock, minutes=1)
    >>> decay = BudgetedDecay(clock, budget, schedule, planned=40)
    >>> _ = model.fit(np.zeros((32, 2)), np.zeros(32), batch_size=8, epochs=10, verbose=0,
    ...               callbacks=[clock, budget, decay])
    <BLANKLINE>
    schedule: the learning rate reaches zero at update 40 (the planned end), re-planned
    every epoch
    >>> decay.ends[-1], optimizer_steps(model)
    (40, 40)
    """

    def __init__(self, clock, budget, schedule, planned, accumulate_batches=1):
        super().__init__()
        self.clock, self.budget, self.schedule = clock, budget, schedule
        self.planned, self.accumulate = planned, accumulate_batches
        self.paces = []  # steady seconds per training batch, one an epoch
        self.ends = []  # the planned last update after each epoch
        self.end = int(schedule.total_steps.numpy())

    def on_epoch_end(self, epoch, logs=None):
        if self.model.stop_training:  # a cut epoch: the run is over
            return
        batches = len(self.clock.batches("train"))
        self.paces.append(self.clock.steady_epoch_seconds() / max(1, batches))
        left = max(0.0, self.budget.seconds_left())
        fits = int(left / statistics.median(self.paces)) // self.accumulate
        self.end = min(self.planned, optimizer_steps(self.model) + fits)
        self.schedule.set_total_steps(self.end)
        self.end = int(self.schedule.total_steps.numpy())  # kept past the warm-up
        if not self.ends:
            print(f"\nschedule: the learning rate reaches zero at update {self.end:,} "
                  f"({'the planned end' if self.end == self.planned else 'the budget end'}), "
                  f"re-planned every epoch", flush=True)
        self.ends.append(self.end)

    def on_train_batch_end(self, batch, logs=None):
        # At the planned end `fit` ends by itself, its last epoch whole.
        if self.end < self.planned and optimizer_steps(self.model) >= self.end:
            self.model.stop_training = True


def optimizer_steps(model):
    """Optimizer updates so far (`int()` of the variable fails under distribution
    strategies, where it is a MirroredVariable)."""
    return int(model.optimizer.iterations.numpy())


class StepLimit(keras.callbacks.Callback):
    """Stops `fit` after `max_steps` optimizer steps in all (resumed runs included)."""

    def __init__(self, max_steps):
        super().__init__()
        self.max_steps = max_steps

    def on_train_batch_end(self, batch, logs=None):
        if optimizer_steps(self.model) >= self.max_steps:
            self.model.stop_training = True
