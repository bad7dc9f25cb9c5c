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
    """Per-token loss `[batch, length]` against (1-ε)·one_hot + ε/V (ε = label_smoothing).

    Written as logsumexp(z) - (1-ε)·z_target - ε·mean(z) with its gradient given in
    closed form, softmax(z) - (1-ε)·one_hot - ε/V: automatic differentiation of the
    log-softmax, the target gather and the mean made several passes over the
    `[tokens, vocab]` logits and cost ~1.6x more time (measured with bench/train.py's
    "small" workload, where the loss is ~10 % of a training step).
    """
    logits = ops.cast(logits, "float32")
    target_ids = ops.cast(target_ids, "int32")
    vocab_size = ops.shape(logits)[-1]
    smoothing = float(label_smoothing)

    @ops.custom_gradient
    def loss(logits):
        log_normalizer = ops.logsumexp(logits, axis=-1)
        target_logit = ops.squeeze(
            ops.take_along_axis(logits, ops.expand_dims(target_ids, -1), -1), -1)
        per_token = log_normalizer - (1.0 - smoothing) * target_logit
        if smoothing:
            per_token = per_token - smoothing * ops.mean(logits, axis=-1)

        def grad(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            probs = ops.exp(logits - ops.expand_dims(log_normalizer, -1))
            target = ops.one_hot(target_ids, vocab_size, dtype="float32")
            gradient = probs - (1.0 - smoothing) * target
            if smoothing:
                gradient = gradient - smoothing / ops.cast(vocab_size, "float32")
            return gradient * ops.expand_dims(upstream, -1)

        return per_token, grad

    return loss(logits)


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
        # A hit is a target logit equal to the row's maximum: one max-reduction, which
        # is cheaper than argmax over the vocabulary (they differ only on exact ties).
        target = ops.take_along_axis(y_pred, ops.expand_dims(y_true, -1), -1)
        best = ops.max(y_pred, axis=-1, keepdims=True)
        hits = ops.logical_and(ops.squeeze(ops.greater_equal(target, best), -1), mask)
        self.correct.assign_add(ops.sum(ops.cast(hits, "float32")))
        self.total.assign_add(ops.sum(ops.cast(mask, "float32")))

    def result(self):
        return ops.divide_no_nan(self.correct, self.total)

    def reset_state(self):
        self.correct.assign(0.0)
        self.total.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id}
