"""The loss, its hand-written gradient, the accuracy metric and the XLA dropout path."""

import numpy as np
import pytest
import tensorflow as tf

from keras_transformer.layers import Dropout
from keras_transformer.losses import MaskedAccuracy, MaskedCrossEntropy, smoothed_cross_entropy

EPSILON, VOCAB = 0.1, 37


def reference_loss(target_ids, logits, epsilon):
    """Cross-entropy against (1-ε)·one_hot + ε/V, by automatic differentiation."""
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    smoothed = tf.one_hot(target_ids, VOCAB) * (1 - epsilon) + epsilon / VOCAB
    return -tf.reduce_sum(smoothed * log_probs, axis=-1)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(0, 3, (4, 6, VOCAB)), "float32")
    targets = rng.integers(1, VOCAB, (4, 6)).astype("int32")
    targets[:, 4:] = 0  # padding
    return tf.constant(targets), logits


@pytest.mark.parametrize("epsilon", [0.0, EPSILON])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_loss_and_gradient_equal_automatic_differentiation(batch, epsilon, jit_compile):
    targets, logits = batch
    weights = tf.random.stateless_uniform(targets.shape, (1, 2))  # a non-uniform upstream

    @tf.function(jit_compile=jit_compile)
    def value_and_grad(loss_fn):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = tf.reduce_sum(loss_fn(targets, logits, epsilon) * weights)
        return loss, tape.gradient(loss, logits)

    ours, our_grad = value_and_grad(smoothed_cross_entropy)
    reference, reference_grad = value_and_grad(reference_loss)
    np.testing.assert_allclose(ours, reference, rtol=1e-5)
    np.testing.assert_allclose(our_grad, reference_grad, atol=1e-6)


def test_masked_loss_is_the_mean_over_real_tokens(batch):
    targets, logits = batch
    per_token = reference_loss(targets, logits, EPSILON).numpy()
    real = targets.numpy() != 0
    loss = MaskedCrossEntropy(label_smoothing=EPSILON)(targets, logits)
    np.testing.assert_allclose(float(loss), per_token[real].mean(), rtol=1e-5)


def test_accuracy_equals_argmax_accuracy(batch):
    _, logits = batch
    predicted = tf.argmax(logits, -1, "int32")
    targets = tf.concat([predicted[:, :2], tf.fill((4, 4), 5)], 1)  # sure hits, then mixed
    metric = MaskedAccuracy()
    metric.update_state(targets, logits)
    real = targets.numpy() != 0
    hits = (predicted.numpy() == targets.numpy())[real]
    assert float(metric.result()) == pytest.approx(hits.mean())
    assert 0 < float(metric.result()) < 1


@pytest.mark.parametrize("jit_compile", [False, True])
def test_dropout_rate_scale_and_fresh_masks(jit_compile):
    layer = Dropout(0.3, seed=7)
    x = tf.ones((200, 500))
    step = tf.function(lambda x: layer(x, training=True), jit_compile=jit_compile)
    first, second = step(x).numpy(), step(x).numpy()
    assert abs((first == 0).mean() - 0.3) < 0.01
    survivors = first[first != 0]
    assert (survivors == survivors[0]).all()  # one scale; under XLA 1 / (1 - rate rounded)
    np.testing.assert_allclose(survivors[0], 1 / 0.7, rtol=1e-4)
    assert abs(first.mean() - 1.0) < 0.01  # the expectation is kept
    assert (first != second).any()  # a new mask every call
    np.testing.assert_array_equal(layer(x, training=False), x)
