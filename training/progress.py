"""What a run tells its user while `fit` runs: the plan, the time an epoch takes, and
when a time budget stops it.

The plan and the budget share one clock, `EpochClock`, which times every batch.
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

    def steady_epoch_seconds(self):
        measured = sum(sum(b) for b in self._batches.values())
        other = max(0.0, self.epoch_seconds[-1] - measured)
        return sum(steady_seconds(b) for b in self._batches.values()) + other


class TrainingPlan(keras.callbacks.Callback):
    """Prints the plan before the first step and a time estimate after the first epoch."""

    def __init__(self, clock, epochs, steps_per_epoch, tokens_per_epoch, precision,
                 budget=None):
        super().__init__()
        self.clock, self.budget = clock, budget
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.tokens_per_epoch, self.precision = tokens_per_epoch, precision
        self.first_epoch = None

    def on_train_begin(self, logs=None):
        tokens = (f"{self.tokens_per_epoch:,} target tokens an epoch" if self.tokens_per_epoch
                  else "epochs of a fixed step count")
        print(f"plan: {self.epochs} epochs x {self.steps_per_epoch} steps "
              f"({self.epochs * self.steps_per_epoch} steps, {tokens}), {self.precision}"
              + (f", at most {self.budget:g} min of training" if self.budget else ""),
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

    def on_train_batch_end(self, batch, logs=None):
        elapsed = time.time() - self.started + self.used_seconds
        if self.stopped_after or elapsed + self.clock.validation_seconds < self.seconds:
            return
        self.model.stop_training = True
        self.stopped_after = (self.epoch + 1, batch + 1)
        print(f"\ntime budget: stopping in epoch {self.epoch + 1} after step {batch + 1} "
              f"({elapsed / 60:.1f} of {self.seconds / 60:g} min)", flush=True)


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
