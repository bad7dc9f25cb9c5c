"""A tiny model trained with `model.fit` learns to reverse sequences."""

import keras
import numpy as np
import pytest

import keras_transformer as kt
from keras_transformer.losses import MaskedAccuracy, MaskedCrossEntropy
from keras_transformer.schedules import paper_optimizer
from keras_transformer.tokenizer import BOS_ID, EOS_ID

BOS, EOS, VOCAB, MAX_LEN = BOS_ID, EOS_ID, 12, 8


def reverse_task(rng, n):
    """Random sequences of ids 4..11; the target is the reversed sequence then eos.

    bos/eos are the tokenizer's ids, which the decoders use."""
    source = np.zeros((n, MAX_LEN), "int32")
    target_in = np.zeros((n, MAX_LEN + 1), "int32")
    target_out = np.zeros((n, MAX_LEN + 1), "int32")
    for i, length in enumerate(rng.integers(3, MAX_LEN + 1, n)):
        tokens = rng.integers(EOS + 1, VOCAB, length)
        source[i, :length] = tokens
        target_in[i, 0], target_in[i, 1:length + 1] = BOS, tokens[::-1]
        target_out[i, :length], target_out[i, length] = tokens[::-1], EOS
    return (source, target_in), target_out


def train_reverse_model():
    """A tiny Transformer fitted with `model.fit` on the reverse task; returns it and
    held-out data."""
    rng = np.random.default_rng(0)
    x, y = reverse_task(rng, 4096)
    x_val, y_val = reverse_task(rng, 512)
    config = kt.TransformerConfig.from_preset("tiny", vocab_size=VOCAB, d_model=64, num_heads=4,
                                              d_ff=128)
    model = kt.Transformer(config)
    model.compile(optimizer=paper_optimizer(64, warmup_steps=200),
                  loss=MaskedCrossEntropy(), metrics=[MaskedAccuracy()])
    model.fit(x, y, batch_size=64, epochs=16, verbose=0)
    return model, x_val, y_val


def test_tiny_model_learns_to_reverse(reverse_model):
    model, x_val, y_val = reverse_model
    _, accuracy = model.evaluate(x_val, y_val, batch_size=256, verbose=0)
    assert accuracy >= 0.99


def test_cosine_schedule_peaks_with_the_paper_schedule_and_ends_at_zero():
    from keras_transformer.schedules import learning_rate_schedule

    paper = learning_rate_schedule(128, 600, 0.5)
    cosine = learning_rate_schedule(128, 600, 0.5, "cosine", total_steps=3000)
    # Same warm-up line, the same peak (the paper schedule counts steps from 1).
    np.testing.assert_allclose(float(cosine(600)), float(paper(599)), rtol=1e-6)
    np.testing.assert_allclose(float(cosine(300)), float(paper(299)), rtol=1e-2)
    rates = [float(cosine(step)) for step in range(600, 3001, 200)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[-1] == pytest.approx(0.0, abs=1e-9) and float(cosine(2999)) > 0
    assert float(cosine(1800)) == pytest.approx(float(cosine(600)) / 2, rel=1e-5)  # halfway


def test_warmup_cosine_decay_is_keras_cosine_decay_with_warm_up():
    """Our cosine (its end movable) gives Keras' CosineDecay numbers at every step."""
    from keras_transformer.schedules import WarmupCosineDecay

    ours = WarmupCosineDecay(2e-3, warmup_steps=600, total_steps=3000)
    keras_cosine = keras.optimizers.schedules.CosineDecay(
        0.0, 2400, alpha=0.0, warmup_target=2e-3, warmup_steps=600)
    steps = np.arange(0, 3200, 7)
    np.testing.assert_allclose([float(ours(s)) for s in steps],
                               [float(keras_cosine(s)) for s in steps], rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="total_steps > warmup_steps"):
        WarmupCosineDecay(1e-3, warmup_steps=600, total_steps=600)


@pytest.mark.parametrize("jit_compile", [True, False])
def test_a_moved_cosine_end_reaches_the_compiled_train_step(jit_compile):
    """`set_total_steps` between two fits changes the rates the already compiled step uses.

    With SGD on w·x for x = 1 and the loss mean(y), each update subtracts exactly that
    update's learning rate from w, so -w is the sum of the rates applied."""
    from keras_transformer.schedules import WarmupCosineDecay

    schedule = WarmupCosineDecay(1.0, warmup_steps=2, total_steps=40)
    model = keras.Sequential([keras.Input((1,)),
                              keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    model.compile(keras.optimizers.SGD(schedule), lambda y, p: keras.ops.mean(p),
                  jit_compile=jit_compile)
    x, y = np.ones((10, 1), "float32"), np.zeros((10, 1), "float32")
    model.fit(x, y, batch_size=1, epochs=1, shuffle=False, verbose=0)
    before = [float(schedule(step)) for step in range(10)]
    schedule.set_total_steps(12)  # the end moves to 2 updates from now
    model.fit(x, y, batch_size=1, epochs=1, shuffle=False, verbose=0)
    after = [float(schedule(step)) for step in range(10, 20)]
    assert after[2:] == [0.0] * 8 and after[0] > 0
    np.testing.assert_allclose(-model.get_weights()[0].item(), sum(before) + sum(after),
                               rtol=1e-5)


def test_weight_decay_from_the_config_shrinks_matrices_but_not_biases_or_norms():
    """`training.weight_decay` reaches the optimizer `train` builds: a zero-gradient update at
    the peak rate scales every weight matrix and the embeddings by 1 - wd x rate and leaves
    the biases and layer-norm parameters of the real model as they were."""
    import types

    import tensorflow as tf

    from keras_transformer.training.config import parse_config
    from keras_transformer.training.train import build_model

    config = parse_config({"model": {"preset": "tiny"},
                           "training": {"weight_decay": 0.1, "warmup_steps": 4,
                                        "decay": "cosine"}})
    model = build_model(config, types.SimpleNamespace(vocab_size=VOCAB),
                        tf.distribute.get_strategy(), total_updates=100)
    (source, target_in), _ = reverse_task(np.random.default_rng(0), 2)
    model((source, target_in))
    variables = model.trainable_variables
    optimizer = model.optimizer
    optimizer.build(variables)
    optimizer.iterations.assign(4)  # the end of warm-up: the peak rate
    rate = float(optimizer.learning_rate)
    assert rate > 1e-4
    before = [v.numpy() for v in variables]
    optimizer.apply([tf.zeros_like(v) for v in variables], variables)
    kept = {"bias": 0, "beta": 0, "gamma": 0}
    decayed = 0
    for variable, old in zip(variables, before):
        excluded = [word for word in kept if word in variable.name]
        if excluded:
            kept[excluded[0]] += 1
            np.testing.assert_array_equal(variable.numpy(), old, err_msg=variable.path)
        else:
            decayed += 1
            np.testing.assert_allclose(variable.numpy(), old * (1 - 0.1 * rate), rtol=1e-6,
                                       err_msg=variable.path)
    assert decayed >= 10 and min(kept.values()) >= 2, (decayed, kept)

    # The default (0) builds no decay at all.
    plain = build_model(parse_config({"model": {"preset": "tiny"}}),
                        types.SimpleNamespace(vocab_size=VOCAB), tf.distribute.get_strategy())
    assert plain.optimizer.weight_decay is None
