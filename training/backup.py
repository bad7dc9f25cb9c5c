"""What a run writes so that a kill at any moment loses nothing: step-exact backups,
checkpoints counted over the whole run, and files that are either complete or absent.

Keras' `BackupAndRestore` restores the weights, the optimizer and the epoch number, but a
run killed in the middle of an epoch re-runs that epoch from its first batch with weights
that already saw part of it, and every dropout layer draws its masks again from its initial
seed (a layer's `SeedGenerator` state is not among the weights Keras saves). A run here
backs up at the end of every epoch (`training.steps_per_epoch` steps in step-based runs)
and when `fit` returns:

    backup/batch-000001015/weights.weights.h5   weights + optimizer (step count, Adam
                                                moments, gradient-accumulation sums)
    backup/batch-000001015/state.json           epochs done, batches taken, dropout seed
                                                states, seconds trained, finished or not,
                                                where a cosine decay ends

On a restart `restore` loads the newest readable backup and `train` skips the training
stream forward by the batches already taken (a seeded, deterministic `tf.data` pipeline), so
the resumed run sees the same batches with the same dropout masks: with TensorFlow op
determinism on it ends with the weights of a run never interrupted (tests/test_resume.py).
A kill loses at most the epoch in progress.

Each file is written under a temporary name and renamed once complete
(`keras_transformer.atomic.replaced_when_done`), so a kill during a write leaves the previous
complete version in place.
"""

import csv
import glob
import json
import os
import time

import keras

from keras_transformer.atomic import PARTIAL, remove, replaced_when_done
from keras_transformer.schedules import cosine_schedule
from keras_transformer.training.averaging import checkpoint_position, list_checkpoints
from keras_transformer.training.config import RunError
from keras_transformer.training.progress import optimizer_steps

def discard_partial_files(run_dir):
    """Remove what a killed run left half-written (`.partial-*` files and directories)."""
    for pattern in ("", "checkpoints", "backup"):
        for path in glob.glob(os.path.join(run_dir, pattern, PARTIAL + "*")):
            remove(path)


def _seed_states(model):
    """The state variables of the model's random generators (dropout), in a fixed order."""
    return [v for v in model.variables if v.name.startswith("seed_generator")]


class RunBackup(keras.callbacks.Callback):
    """Backs up the whole training state at every epoch end and when `fit` returns.

    `state` is what `restore` returned (None for a fresh run); `write=False` (the workers
    other than the chief of a multi-worker run) only counts, it never writes.
    """

    def __init__(self, directory, state=None, write=True, keep=2):
        super().__init__()
        self.directory, self.write, self.keep = directory, write, keep
        state = state or {}
        self.epochs_done = state.get("epochs_done", 0)
        self.batches = state.get("batches", 0)
        self.seconds_before = state.get("seconds", 0.0)
        self._started = self._saved_at = None

    def on_train_begin(self, logs=None):
        self._started = time.time()

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1

    def on_epoch_end(self, epoch, logs=None):
        if self.model.stop_training:  # a cut epoch (step limit, time budget): not done
            return
        self.epochs_done = epoch + 1
        self.save()

    def on_train_end(self, logs=None):
        self.save(finished=True)

    def seconds(self):
        """Seconds of training in all, runs before this one included."""
        return self.seconds_before + (time.time() - self._started if self._started else 0.0)

    def save(self, finished=False):
        if not self.write:
            return
        state = {"epochs_done": self.epochs_done, "batches": self.batches,
                 "optimizer_steps": optimizer_steps(self.model),
                 "seconds": round(self.seconds(), 1), "finished": finished,
                 "seeds": [v.numpy().tolist() for v in _seed_states(self.model)]}
        schedule = cosine_schedule(self.model.optimizer)
        if schedule is not None:  # its end may have been re-planned (schedule_to_budget)
            state["cosine_total_steps"] = int(schedule.total_steps.numpy())
        os.makedirs(self.directory, exist_ok=True)
        if self._saved_at == self.batches:  # the same weights: only the state changes
            with replaced_when_done(os.path.join(self._path(self.batches), "state.json")) \
                    as partial, open(partial, "w") as f:
                json.dump(state, f)
            return
        self._saved_at = self.batches
        # Named by batches taken: sorts in training order; the final save of a run that
        # stopped mid-epoch gets its own name after the last epoch's.
        with replaced_when_done(self._path(self.batches)) as partial:
            os.makedirs(partial)
            self.model.save_weights(os.path.join(partial, "weights.weights.h5"))
            with open(os.path.join(partial, "state.json"), "w") as f:
                json.dump(state, f)
        for old in backups(self.directory)[:-self.keep]:
            remove(old)

    def _path(self, batches):
        return os.path.join(self.directory, f"batch-{batches:09d}")


def backups(directory):
    """Complete backups in `directory`, oldest first."""
    return sorted(glob.glob(os.path.join(directory, "batch-" + "[0-9]" * 9)))


def restore(model, directory):
    """Load the newest readable backup in `directory` into `model` (weights, optimizer,
    dropout seeds). Returns its state (see `RunBackup`), or None if there is no backup.

    A backup that cannot be read (a damaged disk, a file changed by hand) or does not fit
    the model falls back to the one before it; if none can be used, RunError says so
    rather than start over.
    """
    found = backups(directory)
    if not found and any(os.path.exists(os.path.join(directory, name))
                         for name in ("latest.weights.h5", "training_metadata.json")):
        raise RunError(f"{directory} holds a backup of an earlier version (Keras "
                       f"BackupAndRestore), which cannot resume step-exactly: average its "
                       f"checkpoints (`keras-transformer average-checkpoints`), or move "
                       f"{directory} away to start the run over")
    errors = []
    for path in reversed(found):
        try:
            with open(os.path.join(path, "state.json")) as f:
                state = json.load(f)
            seeds = _seed_states(model)
            if len(seeds) != len(state["seeds"]):
                raise ValueError(f"{len(state['seeds'])} dropout seed states, the model "
                                 f"has {len(seeds)}")
            model.load_weights(os.path.join(path, "weights.weights.h5"))
        except (OSError, ValueError, KeyError, TypeError) as e:
            errors.append(f"{os.path.basename(path)}: {' '.join(str(e).split())[:200]}")
            continue
        for variable, value in zip(seeds, state["seeds"]):
            variable.assign(value)
        return state
    if found:
        raise RunError(f"{directory}: no backup could be read or fits this model "
                       f"({'; '.join(errors)}); a changed model cannot resume: train into "
                       f"another --out, or move {directory} away to start the run over")
    return None


def discard_after(run_dir, epochs_done):
    """Remove checkpoints of epochs after the first `epochs_done`: a killed run wrote them
    after its last backup, and the resumed run writes them again (or, with another config,
    never — then they must not be averaged)."""
    for path in list_checkpoints(os.path.join(run_dir, "checkpoints")):
        if checkpoint_position(path)[0] > epochs_done:  # epochs count from 1 in names
            remove(path)


def remove_backups(directory):
    """Remove `directory` (a finished run's backups): first renamed to a `.partial-` name,
    so a kill during the removal never leaves a half-deleted backup that looks whole."""
    if os.path.isdir(directory):
        aside = os.path.join(os.path.dirname(directory), PARTIAL + os.path.basename(directory))
        remove(aside)
        os.replace(directory, aside)
        remove(aside)


def trim_history(path, epochs_done):
    """Keep the complete rows of `history.csv` for the first `epochs_done` epochs.

    A kill can leave a half-written row, or rows of epochs after the last backup that the
    resumed run logs again.
    """
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    header = next(csv.reader(lines[:1]), None)
    keep = lines[:1]
    for line in lines[1:]:
        row = next(csv.reader([line]), [])
        if line.endswith("\n") and header and len(row) == len(header) \
                and row[0].isdigit() and int(row[0]) < epochs_done:
            keep.append(line)
    with replaced_when_done(path) as partial, open(partial, "w", newline="") as f:
        f.writelines(keep if header and lines[0].endswith("\n") else [])


class StepCheckpoints(keras.callbacks.Callback):
    """Weights every `every` optimizer steps of the run (not of this `fit`: a resumed run
    writes its checkpoints at the same steps as an uninterrupted one), as
    `ckpt-eEEE-bBBBBBB.weights.h5` (epoch and batch, 1-based)."""

    def __init__(self, directory, every):
        super().__init__()
        self.directory, self.every = directory, every
        self.epoch, self._last = 0, None

    def on_train_begin(self, logs=None):
        # A resumed run at a checkpointed step must not save that step again (with
        # gradient accumulation the step stays the same for a few batches).
        self._last = optimizer_steps(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = optimizer_steps(self.model)
        if step % self.every or step == self._last:
            return
        self._last = step
        name = f"ckpt-e{self.epoch + 1:03d}-b{batch + 1:06d}.weights.h5"
        with replaced_when_done(os.path.join(self.directory, name)) as partial:
            self.model.save_weights(partial)
