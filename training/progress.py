"""What a run tells its user while `fit` runs: the plan, the time an epoch takes, and
when a time budget stops it.

All three callbacks share one clock, `EpochClock`, so the estimate printed after the
first epoch and the one the budget acts on are the same number.
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

    `epoch_seconds` holds the wall time of each epoch; `steady_epoch_seconds()` the time
    the last one would have taken without its one-off compilations (training batches +
    validation batches + what lies outside both, e.g. epoch-end callbacks). Put it first
    in the callback list so the others read this epoch's figures.
    """

    def __init__(self):
        super().__init__()
        self.epoch_seconds = []
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

    def on_test_begin(self, logs=None):
        self._last = time.time()

    def on_test_batch_end(self, batch, logs=None):
        self._tick("test")

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(round(time.time() - self._epoch_started, 1))

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
        print(f"plan: {self.epochs} epochs x {self.steps_per_epoch} steps "
              f"({self.epochs * self.steps_per_epoch} steps, {self.tokens_per_epoch:,} target "
              f"tokens an epoch), {self.precision}"
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
            line += f" (the {self.budget:g}-min budget decides)"
        print(line, flush=True)


class TimeBudget(keras.callbacks.Callback):
    """Stops training at the end of the epoch after which one more steady epoch
    (`EpochClock.steady_epoch_seconds`) would exceed `minutes` of this run's `fit`."""

    def __init__(self, clock, minutes):
        super().__init__()
        self.clock, self.seconds = clock, 60 * minutes
        self.started = None
        self.stopped_after = None

    def on_train_begin(self, logs=None):
        self.started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.time() - self.started
        if elapsed + self.clock.steady_epoch_seconds() > self.seconds:
            self.model.stop_training = True
            self.stopped_after = epoch + 1
            print(f"\ntime budget: stopping after epoch {epoch + 1} "
                  f"({elapsed / 60:.1f} of {self.seconds / 60:g} min)", flush=True)
