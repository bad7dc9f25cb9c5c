"""A small fix that lets Keras 3.15 `model.fit` run under MultiWorkerMirroredStrategy.

Before training, Keras' TensorFlow trainer builds the model symbolically from the first
batch (`TensorFlowTrainer._maybe_symbolic_build`). It gets that batch by *reducing* the
per-replica values across all replicas with `strategy.reduce("MEAN", ...)`. Under
MultiWorkerMirroredStrategy that becomes a cross-worker collective over the int token
ids, which fails converting a `PerReplica` to a tensor (keras-team/keras#20585). Only the
batch's shapes and dtypes matter there, so the fix takes this worker's first local
replica's values instead — no communication, same shapes.

After each step, Keras averages the logged metrics across workers with
`strategy.reduce("MEAN", v, axis=0)`, which fails for the scalar loss and metrics
("Invalid reduction dimension 0 for input with 0 dimensions"). The fix averages rank-0
values with `axis=None` (the mean over replicas) and leaves the rest to Keras.
"""

import tensorflow as tf
from keras import tree
from keras.src.backend.tensorflow import trainer as tf_trainer

_original = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
_original_reduce = tf_trainer.reduce_per_replica


def _local_symbolic_build(self, iterator=None, data_batch=None):
    strategy = self._distribute_strategy
    if strategy is None or iterator is None:
        return _original(self, iterator=iterator, data_batch=data_batch)
    for _, _, it in iterator:
        batch = next(it)
        data_batch = tree.map_structure(
            lambda x: strategy.experimental_local_results(x)[0]
            if isinstance(x, tf.distribute.DistributedValues) else x,
            batch,
        )
        break
    with strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def _reduce_per_replica(values, strategy, reduction="auto"):
    if reduction not in ("auto", "mean") or not tf_trainer._collective_all_reduce_multi_worker(
            strategy):
        return _original_reduce(values, strategy, reduction)

    def reduce(value):
        local = strategy.experimental_local_results(value)[0]
        if local.shape.rank == 0:
            return strategy.reduce("MEAN", value, axis=None)
        return _original_reduce(value, strategy, reduction)

    return tree.map_structure(reduce, values)


def patch_keras_for_multi_worker():
    """Install the fix (idempotent). Called by `make_strategy("multi_worker")`."""
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _local_symbolic_build
    tf_trainer.reduce_per_replica = _reduce_per_replica
