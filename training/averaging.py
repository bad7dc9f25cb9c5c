"""Checkpoint averaging (§6.1): the mean of the weights of the last K checkpoints."""

import glob
import os
import re

import numpy as np

_CHECKPOINT = re.compile(r"ckpt-e(\d+)-b(\d+)\.weights\.h5$")


def checkpoint_position(path):
    """(epoch, batch), both counted from 1, of a checkpoint file name; None if not one."""
    match = _CHECKPOINT.search(os.path.basename(path))
    return (int(match.group(1)), int(match.group(2))) if match else None


def list_checkpoints(directory):
    """Checkpoint files of a run, oldest first (ordered by epoch, then batch)."""
    found = [(checkpoint_position(path), path)
             for path in glob.glob(os.path.join(directory, "ckpt-*.weights.h5"))]
    return [path for position, path in sorted(found) if position]


def average_checkpoints(model, paths, include_current=False):
    """Load the mean of the weights stored in `paths` into `model`; returns the model.

    `include_current` adds the model's own weights to the mean (a run that stopped
    between two checkpoints averages its final weights too). The optimizer's variables
    (its step, hence the learning rate, and moments) stay the model's own, where a weights
    file would restore the last checkpoint's.
    """
    if not paths and not include_current:
        raise ValueError("No checkpoints to average")
    optimizer = getattr(model, "optimizer", None)
    optimizer_state = [v.numpy() for v in optimizer.variables] if optimizer else []
    total = ([np.asarray(v.numpy(), dtype=np.float64) for v in model.weights]
             if include_current else None)
    for path in paths:
        model.load_weights(path)
        values = [np.asarray(v.numpy(), dtype=np.float64) for v in model.weights]
        total = values if total is None else [t + v for t, v in zip(total, values)]
    for variable, summed in zip(model.weights, total):
        variable.assign((summed / (len(paths) + include_current)).astype(variable.dtype))
    for variable, value in zip(optimizer.variables if optimizer else [], optimizer_state):
        variable.assign(value)
    return model
