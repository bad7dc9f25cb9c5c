"""Label-smoothed cross-entropy over non-pad tokens (§5.4) and masked token accuracy.

Under a `tf.distribute` strategy both are global token means: each replica divides its
*sum* by the token count all-reduced over replicas, and Keras sums gradients across
replicas — so the gradient is that of (all tokens' loss) / (all tokens), not an average
of per-replica means that would over-weight replicas holding short sentences.
"""

import keras
from keras import ops


def _global_sum(value):
    """Sum of `value` over the replicas of the current tf.distribute strategy."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def smoothed_cross_entropy(target_ids, logits, label_smoothing=0.0):
    """Per-token loss `[batch, length]` against (1-ε)·one_hot + ε/V (ε = label_smoothing)."""
    logits = ops.cast(logits, "float32")
    log_probs = ops.log_softmax(logits, axis=-1)
    target_ids = ops.cast(target_ids, "int32")
    nll = -ops.squeeze(ops.take_along_axis(log_probs, ops.expand_dims(target_ids, -1), -1), -1)
    if not label_smoothing:
        return nll
    uniform = -ops.mean(log_probs, axis=-1)
    return (1.0 - label_smoothing) * nll + label_smoothing * uniform


@keras.saving.register_keras_serializable(package="keras_transformer")
class MaskedCrossEntropy(keras.losses.Loss):
    """Mean label-smoothed cross-entropy of the non-pad target tokens.

    Returns one scalar: the sum over this replica's real tokens divided by the global
    number of real tokens (see module docstring).

    Example:
    >>> loss = MaskedCrossEntropy(label_smoothing=0.1)
    >>> y = keras.ops.convert_to_tensor([[3, 4, 0]])
    >>> float(loss(y, keras.ops.zeros((1, 3, 10)))) > 0
    True
    """

    def __init__(self, label_smoothing=0.0, pad_id=0, name="masked_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing
        self.pad_id = pad_id

    def call(self, y_true, y_pred):
        mask = ops.cast(ops.not_equal(y_true, self.pad_id), "float32")
        losses = smoothed_cross_entropy(y_true, y_pred, self.label_smoothing) * mask
        tokens = _global_sum(ops.sum(mask))
        return ops.sum(losses) / ops.maximum(tokens, 1.0)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing,
                "pad_id": self.pad_id}


@keras.saving.register_keras_serializable(package="keras_transformer")
class MaskedAccuracy(keras.metrics.Metric):
    """Fraction of non-pad target tokens whose arg-max prediction is right."""

    def __init__(self, pad_id=0, name="accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pad_id = pad_id
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")
        mask = ops.not_equal(y_true, self.pad_id)
        hits = ops.logical_and(ops.equal(ops.cast(ops.argmax(y_pred, -1), "int32"), y_true), mask)
        self.correct.assign_add(ops.sum(ops.cast(hits, "float32")))
        self.total.assign_add(ops.sum(ops.cast(mask, "float32")))

    def result(self):
        return ops.divide_no_nan(self.correct, self.total)

    def reset_state(self):
        self.correct.assign(0.0)
        self.total.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id}
