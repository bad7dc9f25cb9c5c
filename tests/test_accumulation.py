"""Exact gradient accumulation (`compile(accumulate_batches=k)`, see
keras_transformer/accumulation.py): k batches with different numbers of real target
tokens make the same update as one batch holding all of them, in eager, graph and XLA
modes and on 2 replicas, and a checkpoint taken between two batches of an update resumes
exactly.

Run as a script (`python tests/test_accumulation.py mirrored OUT.npz WEIGHTS.h5`), this
file is the subprocess body of the MirroredStrategy test: logical CPU devices must be set
up before TensorFlow starts.
"""

import os
import subprocess
import sys

import numpy as np

VOCAB, BATCH, K = 24, 2, 3


def _data(batches):
    """`batches` micro-batches of BATCH pairs with the same padded lengths (so they can be
    concatenated) and very different numbers of real target tokens: 12, 6, 3, 12, 6, 3...
    A mean of per-batch means would give the 3 tokens of a short batch 4x the weight of
    a token of a long one."""
    rng = np.random.default_rng(0)
    n = batches * BATCH
    source = rng.integers(3, VOCAB, (n, 7)).astype("int32")
    target = rng.integers(3, VOCAB, (n, 7)).astype("int32")
    for b in range(batches):
        real = [(6, 6), (4, 2), (2, 1)][b % 3]
        for row, length in enumerate(real):
            target[b * BATCH + row, length + 1:] = 0
    target_in, target_out = target[:, :-1], target[:, 1:]
    return (source, target_in), target_out


def _model(accumulate_batches=1, optimizer=None, strategy=None, **compile_kwargs):
    """A tiny Transformer with the same start under every strategy and mode."""
    import contextlib

    import keras

    import keras_transformer as kt

    with strategy.scope() if strategy else contextlib.nullcontext():
        model = kt.Transformer(kt.TransformerConfig.from_preset(
            "tiny", vocab_size=VOCAB, d_model=32, num_heads=4, d_ff=64, num_encoder_layers=1,
            num_decoder_layers=1))
        start = np.random.default_rng(1)
        model.set_weights([start.normal(0.0, 0.2, w.shape).astype(w.dtype)
                           for w in model.get_weights()])
        model.compile(optimizer=optimizer or keras.optimizers.SGD(1.0),
                      loss=kt.losses.MaskedCrossEntropy(label_smoothing=0.1),
                      accumulate_batches=accumulate_batches, **compile_kwargs)
    return model


def _fit(model, x, y, start=0, stop=None):
    """Train on micro-batches `start` to `stop` (in order)."""
    stop = len(y) // BATCH if stop is None else stop
    rows = slice(start * BATCH, stop * BATCH)
    model.fit((x[0][rows], x[1][rows]), y[rows], batch_size=BATCH, shuffle=False, verbose=0)
    return model


def _objects(arrays):
    """A list of differently shaped arrays as one object array (for np.savez)."""
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


def _max_difference(a, b):
    return max(float(np.abs(u - v).max()) for u, v in zip(a, b))


def _mirrored_worker(out, weights_path):
    from keras_transformer.training.strategy import make_strategy

    strategy = make_strategy("mirrored", devices=2)
    x, y = _data(4)
    # Global batches of 2 * BATCH pairs, one BATCH per replica: batch 0 (rows 0-3) holds
    # 12 + 6 real tokens, batch 1 (rows 4-7) 3 + 12, each replica a different count.
    global_batch = 2 * BATCH
    mirrored = _model(2, strategy=strategy)
    initial = mirrored.get_weights()
    mirrored.fit(x, y, batch_size=global_batch, shuffle=False, verbose=0)
    after_update = mirrored.get_weights()
    iterations = int(mirrored.optimizer.iterations.numpy())
    # A third global batch (rows 0-3 again) starts the next update; back up mid-way.
    mirrored.fit((x[0][:4], x[1][:4]), y[:4], batch_size=global_batch, verbose=0)
    mirrored.save_weights(weights_path)
    # One device, one batch of all 8 pairs: the update the 2 replicas x 2 batches made.
    big = _model(1, run_eagerly=True)
    big.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    # Resume the backup on one device and complete the update with rows 4-7, as the 2
    # replicas go on to do.
    resumed = _model(2, run_eagerly=True)
    resumed.load_weights(weights_path)
    resumed.fit((x[0][4:], x[1][4:]), y[4:], batch_size=global_batch, verbose=0)
    mirrored.fit((x[0][4:], x[1][4:]), y[4:], batch_size=global_batch, verbose=0)
    np.savez(out, replicas=strategy.num_replicas_in_sync, iterations=iterations,
             resumed_iterations=int(resumed.optimizer.iterations.numpy()),
             mirrored=_objects([w - i for w, i in zip(after_update, initial)]),
             big=_objects([w - i for w, i in zip(big.get_weights(), initial)]),
             resumed=_objects(resumed.get_weights()),
             continued=_objects(mirrored.get_weights()))


if __name__ == "__main__":
    _mirrored_worker(sys.argv[2], sys.argv[3])
    sys.exit(0)


import keras  # noqa: E402
import pytest  # noqa: E402

import keras_transformer as kt  # noqa: E402


@pytest.fixture(scope="module")
def big_sgd_step():
    """(initial weights, weights after one SGD step on all K micro-batches at once)."""
    x, y = _data(K)
    big = _model(1, run_eagerly=True)
    initial = big.get_weights()
    big.fit(x, y, batch_size=K * BATCH, verbose=0)
    assert _max_difference(big.get_weights(), initial) > 1e-2  # the update is large
    return initial, big.get_weights()


@pytest.mark.parametrize("mode", ["eager", "graph", "xla", "loss_scale"])
def test_k_batches_make_the_sgd_update_of_one_big_batch(mode, big_sgd_step):
    initial, big = big_sgd_step
    x, y = _data(K)
    compile_kwargs = {"eager": {"run_eagerly": True}, "graph": {"jit_compile": False},
                      "xla": {"jit_compile": True}, "loss_scale": {"run_eagerly": True}}[mode]
    optimizer = keras.optimizers.SGD(1.0)
    if mode == "loss_scale":  # as training/train.py does for mixed_float16
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    accuracy = kt.losses.MaskedAccuracy()
    accumulated = _fit(_model(K, optimizer, metrics=[accuracy], **compile_kwargs), x, y)

    assert int(accumulated.optimizer.iterations) == 1
    assert float(accumulated.gradient_accumulator.batches.numpy()) == 0  # reset
    np.testing.assert_allclose(np.concatenate([w.ravel() for w in accumulated.get_weights()]),
                               np.concatenate([w.ravel() for w in big]), atol=1e-6, rtol=0)
    # The metrics saw every micro-batch: all 12 + 6 + 3 real target tokens.
    assert float(accuracy.total.numpy()) == float(np.sum(y != 0)) == 21
    if mode == "eager":
        # The data tells the exact token mean from Keras' own accumulation, a plain mean
        # of the batch gradients (short batches over-weighted).
        keras_mean = kt.Transformer(accumulated.config)
        keras_mean.set_weights(initial)
        keras_mean.compile(optimizer=keras.optimizers.SGD(1.0, gradient_accumulation_steps=K),
                           loss=kt.losses.MaskedCrossEntropy(label_smoothing=0.1),
                           run_eagerly=True)
        _fit(keras_mean, x, y)
        assert _max_difference(keras_mean.get_weights(), big) > 1e-3


def _adam_state(model, kind=("momentum", "velocity")):
    """Adam's first and second moments of every weight (or those of `kind`)."""
    return [v.numpy() for v in model.optimizer.variables
            if any(v.path.endswith(f"_{name}") for name in kind)]


def _paper_adam():  # warm-up of 4 updates: the rate doubles from update 1 to update 2
    return kt.schedules.paper_optimizer(d_model=32, warmup_steps=4)


def test_paper_adam_and_schedule_make_the_updates_of_the_big_batches():
    x, y = _data(2 * K)
    big, accumulated = _model(1, _paper_adam(), run_eagerly=True), \
        _model(K, _paper_adam(), run_eagerly=True)
    for update in (1, 2):
        rows = slice((update - 1) * K * BATCH, update * K * BATCH)
        big.fit((x[0][rows], x[1][rows]), y[rows], batch_size=K * BATCH, verbose=0)
        _fit(accumulated, x, y, (update - 1) * K, update * K)
        # One update per K batches, and the schedule follows the updates.
        assert int(accumulated.optimizer.iterations) == int(big.optimizer.iterations) == update
        assert float(accumulated.optimizer.learning_rate) == float(big.optimizer.learning_rate)
        for kind in (["momentum"], ["velocity"]):  # to 1e-6 of the largest
            a, b = (np.concatenate([m.ravel() for m in _adam_state(model, kind)])
                    for model in (accumulated, big))
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * float(np.abs(b).max()))
        if update == 1:
            # Adam divides each gradient element by its own magnitude (+ ε = 1e-9): where
            # the gradient is ~0 (attention key biases: exactly 0 in theory), rounding
            # noise becomes a ±learning-rate step in either model. The other weights:
            moments = _adam_state(big, ["momentum"])  # 0.1 x the gradient
            clear = [np.abs(m) > 1e-7 for m in moments]
            assert sum(c.sum() for c in clear) > 0.6 * sum(m.size for m in moments)  # 67 %
            for a, b, c in zip(accumulated.get_weights(), big.get_weights(), clear):
                np.testing.assert_allclose(a[c], b[c], atol=1e-6, rtol=0)


def test_a_backup_between_two_batches_of_an_update_resumes_exactly(tmp_path):
    x, y = _data(4)
    uninterrupted = _fit(_model(2, _paper_adam(), run_eagerly=True), x, y)
    interrupted = _fit(_model(2, _paper_adam(), run_eagerly=True), x, y, 0, 3)  # update + 1
    weights, whole = str(tmp_path / "backup.weights.h5"), str(tmp_path / "model.keras")
    interrupted.save_weights(weights)
    interrupted.save(whole)
    pending = [v.numpy() for v in interrupted.gradient_accumulator.weights]
    assert float(interrupted.gradient_accumulator.batches.numpy()) == 1

    resumed = _model(2, _paper_adam(), run_eagerly=True)  # a fresh start, then the backup
    resumed.set_weights([w * 0 for w in resumed.get_weights()])
    resumed.load_weights(weights)
    reloaded = keras.models.load_model(whole)
    assert reloaded.gradient_accumulator.steps == 2
    for model in (resumed, reloaded):
        for a, b in zip(model.gradient_accumulator.weights, pending):
            np.testing.assert_array_equal(a.numpy(), b)
        model.run_eagerly = True
        _fit(model, x, y, 3, 4)
        assert int(model.optimizer.iterations) == 2
        for a, b in zip(model.get_weights(), uninterrupted.get_weights()):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(_adam_state(model), _adam_state(uninterrupted)):
            np.testing.assert_array_equal(a, b)


def test_k_1_has_no_accumulator_and_files_load_both_ways(tmp_path):
    plain = _model(1)
    assert plain.gradient_accumulator is None
    assert "accumulate_batches" not in plain.get_compile_config()
    plain.save_weights(str(tmp_path / "plain.weights.h5"))
    # A file without accumulator state (k = 1, or older) loads with an empty one.
    accumulating = _model(2)
    assert accumulating.get_compile_config()["accumulate_batches"] == 2
    for variable in accumulating.gradient_accumulator.weights:
        variable.assign(variable.numpy() + 1.0)
    accumulating.load_weights(str(tmp_path / "plain.weights.h5"))
    assert all(not v.numpy().any() for v in accumulating.gradient_accumulator.weights)
    # A file with it loads into an uncompiled model (evaluation, checkpoint averaging);
    # the state is outside model.weights.
    accumulating.save_weights(str(tmp_path / "accumulating.weights.h5"))
    bare = kt.Transformer(plain.config)
    bare.load_weights(str(tmp_path / "accumulating.weights.h5"))
    assert len(bare.weights) == len(accumulating.weights) == len(plain.weights)
    with pytest.raises(ValueError, match="accumulate_batches must be an integer >= 1"):
        _model(0)
    with pytest.raises(ValueError, match="MaskedCrossEntropy"):
        kt.Transformer(plain.config).compile(optimizer="sgd", accumulate_batches=2,
                                             loss="sparse_categorical_crossentropy")


def test_mirrored_2_replicas_accumulate_the_global_token_mean(tmp_path):
    out, weights = tmp_path / "mirrored.npz", tmp_path / "mirrored.weights.h5"
    worker = subprocess.run([sys.executable, os.path.abspath(__file__), "mirrored", str(out),
                             str(weights)], capture_output=True, text=True, timeout=300,
                            check=False)
    assert worker.returncode == 0, worker.stderr[-3000:]
    with np.load(out, allow_pickle=True) as result:
        assert int(result["replicas"]) == 2
        assert int(result["iterations"]) == 1 and int(result["resumed_iterations"]) == 2
        assert _max_difference(result["big"], [0 * w for w in result["big"]]) > 1e-2
        # 2 batches x 2 replicas with 12, 6 / 3, 12 real tokens == one batch of all 33.
        assert _max_difference(result["mirrored"], result["big"]) < 1e-6
        # The backup taken on 2 replicas mid-update holds the sum of both replicas' parts:
        # resumed on one device, it makes the update the 2 replicas made.
        assert _max_difference(result["resumed"], result["continued"]) < 1e-6
