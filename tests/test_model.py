"""Model-level properties: causality, padding invariance, sizes, saving, precision, cache."""

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_transformer as kt
from tests.conftest import random_ids, tiny_config

VARIANTS = {
    "post_ln_shared": tiny_config(),
    "pre_ln_untied": tiny_config(norm_first=True, share_embeddings=False, tie_embeddings=False,
                                 target_vocab_size=30),
}


@pytest.fixture(params=list(VARIANTS), scope="module")
def model(request):
    keras.utils.set_random_seed(7)
    return kt.Transformer(VARIANTS[request.param])


def _logits(model, src, tgt):
    return np.asarray(model((src, tgt), training=False))


def test_output_shape_and_dtype(model):
    rng = np.random.default_rng(0)
    out = model((random_ids(rng, 3, 5), random_ids(rng, 3, 4, vocab=30)))
    assert out.shape == (3, 4, model.config.output_vocab_size)
    assert out.dtype == "float32"


def test_causality(model):
    rng = np.random.default_rng(1)
    src = random_ids(rng, 2, 6)
    tgt = rng.integers(3, 30, size=(2, 7)).astype("int32")
    base = _logits(model, src, tgt)
    for t in range(6):
        changed = tgt.copy()
        changed[:, t + 1:] = rng.integers(3, 30, size=(2, 6 - t))
        other = _logits(model, src, changed)
        np.testing.assert_allclose(other[:, : t + 1], base[:, : t + 1], atol=1e-5)
        assert not np.allclose(other[:, t + 1:], base[:, t + 1:], atol=1e-5)


def test_padding_invariance(model):
    rng = np.random.default_rng(2)
    src = random_ids(rng, 4, 6)
    tgt = random_ids(rng, 4, 5, vocab=30)
    base = _logits(model, src, tgt)
    padded = _logits(model, np.pad(src, ((0, 0), (0, 4))), np.pad(tgt, ((0, 0), (0, 3))))
    real = tgt != 0
    np.testing.assert_allclose(padded[:, :5][real], base[real], atol=1e-5)


@pytest.mark.parametrize("config", [
    tiny_config(),
    tiny_config(norm_first=True),
    tiny_config(share_embeddings=False, target_vocab_size=25),
    tiny_config(share_embeddings=False, tie_embeddings=False, target_vocab_size=25),
    tiny_config(num_encoder_layers=1, num_decoder_layers=3, d_ff=48),
])
def test_parameter_count_matches_closed_formula(config):
    assert kt.Transformer(config).count_params() == config.num_parameters()


@pytest.mark.parametrize("preset,paper_millions", [("base", 65), ("big", 213)])
def test_paper_sizes_within_five_percent(preset, paper_millions):
    config = kt.TransformerConfig.from_preset(preset, vocab_size=37000)
    assert abs(config.num_parameters() / (paper_millions * 1e6) - 1) < 0.05
    if preset == "base":  # building "big" takes ~1 GB; the formula is checked above
        assert kt.Transformer(config).count_params() == config.num_parameters()


def test_keras_file_round_trip(tmp_path, model):
    rng = np.random.default_rng(3)
    src, tgt = random_ids(rng, 2, 6), random_ids(rng, 2, 5, vocab=30)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode stays on
    assert isinstance(loaded, kt.Transformer)
    assert loaded.config == model.config
    np.testing.assert_array_equal(_logits(loaded, src, tgt), _logits(model, src, tgt))


def test_mixed_bfloat16_forward_and_backward_are_finite():
    model = kt.Transformer(tiny_config(dropout=0.1), dtype="mixed_bfloat16")
    rng = np.random.default_rng(4)
    src, tgt = random_ids(rng, 3, 6), random_ids(rng, 3, 5)
    loss_fn = kt.losses.MaskedCrossEntropy(label_smoothing=0.1)
    with tf.GradientTape() as tape:
        logits = model((src, tgt), training=True)
        loss = loss_fn(np.roll(tgt, -1, axis=1), logits)
    grads = tape.gradient(loss, model.trainable_variables)
    assert logits.dtype == "float32" and np.isfinite(float(loss))
    assert model.encoder.blocks[0].self_attention.compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_compile_builds_optimizer_so_fit_traces_the_step_once():
    model = kt.Transformer(tiny_config())
    model.compile(optimizer="adam", loss=kt.losses.MaskedCrossEntropy())
    assert model.optimizer.built
    traces = []
    train_step = model.train_step

    def counting_train_step(data):
        traces.append(1)  # Python runs only while tf.function traces
        return train_step(data)

    model.train_step = counting_train_step
    rng = np.random.default_rng(5)
    src, tgt = random_ids(rng, 4, 6), random_ids(rng, 4, 5)
    model.fit((src, tgt), np.roll(tgt, -1, axis=1), epochs=2, verbose=0)
    assert len(traces) == 1


def test_compiled_model_loads_compiled_with_its_optimizer_state(tmp_path):
    model = kt.Transformer(tiny_config())
    model.compile(optimizer="adam", loss=kt.losses.MaskedCrossEntropy(label_smoothing=0.1),
                  metrics=[kt.losses.MaskedAccuracy()])
    rng = np.random.default_rng(6)
    src, tgt = random_ids(rng, 4, 6), random_ids(rng, 4, 5)
    model.fit((src, tgt), np.roll(tgt, -1, axis=1), epochs=3, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.compiled and loaded.optimizer.built
    assert int(loaded.optimizer.iterations.numpy()) == 3
    assert loaded.loss.label_smoothing == 0.1
    saved = [v.numpy() for v in model.optimizer.variables]
    assert sum(np.abs(v).sum() for v in saved[2:]) > 0  # slots moved away from zero
    for restored, original in zip(loaded.optimizer.variables, saved, strict=True):
        np.testing.assert_allclose(restored.numpy(), original)
    loaded.fit((src, tgt), np.roll(tgt, -1, axis=1), epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations.numpy()) == 4


LOAD_IN_FRESH_PROCESS = """
import sys
import keras_transformer  # the only import of ours: it must register every saved class
import keras

model = keras.saving.load_model(sys.argv[1])  # safe_mode on
print(type(model).__name__, type(model.loss).__name__,
      model.optimizer.get_config()["learning_rate"]["class_name"])
"""


def test_keras_file_loads_in_a_fresh_process_after_importing_the_package(tmp_path):
    """A fresh process that imports only `keras_transformer` loads a compiled run model
    (model, loss, metric and learning-rate schedule classes all registered)."""
    model = kt.Transformer(tiny_config())
    model.compile(optimizer=keras.optimizers.Adam(kt.schedules.InverseSqrtSchedule(32, 10)),
                  loss=kt.losses.MaskedCrossEntropy(), metrics=[kt.losses.MaskedAccuracy()])
    rng = np.random.default_rng(8)
    src, tgt = random_ids(rng, 2, 5), random_ids(rng, 2, 4)
    model.fit((src, tgt), np.roll(tgt, -1, axis=1), epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    result = subprocess.run(
        [sys.executable, "-I", "-c", LOAD_IN_FRESH_PROCESS, str(tmp_path / "model.keras")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["Transformer", "MaskedCrossEntropy", "InverseSqrtSchedule"]
    assert "cuda" not in result.stderr.lower()  # the package import is quiet

def _step_by_step(model, src, tgt, max_length):
    memory, source_mask = model.encode(src)
    cache = model.init_cache(memory, max_length)
    steps = []
    for t in range(tgt.shape[1]):
        logits, cache = model.decode_step(tgt[:, t], t, cache, source_mask)
        steps.append(np.asarray(logits))
    return np.stack(steps, axis=1)


def test_cached_decoding_equals_full_forward(model):
    rng = np.random.default_rng(5)
    src = random_ids(rng, 3, 7)
    tgt = rng.integers(3, 30, size=(3, 6)).astype("int32")
    full = _logits(model, src, tgt)
    np.testing.assert_allclose(_step_by_step(model, src, tgt, max_length=9), full, atol=1e-5)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_cached_step_compiles_with_static_shapes(model, jit_compile):
    rng = np.random.default_rng(6)
    src = random_ids(rng, 2, 5)
    tgt = rng.integers(3, 30, size=(2, 4)).astype("int32")
    memory, source_mask = model.encode(src)

    @tf.function(jit_compile=jit_compile)
    def run(memory, source_mask, tgt):
        cache = model.init_cache(memory, 8)

        def body(t, cache, out):
            logits, cache = model.decode_step(tgt[:, t], t, cache, source_mask)
            return t + 1, cache, tf.tensor_scatter_nd_update(out, [[t]], logits[None])

        out = tf.zeros((4, 2, model.config.output_vocab_size))
        _, _, out = tf.while_loop(lambda t, *_: t < 4, body, (0, cache, out))
        return tf.transpose(out, (1, 0, 2))

    np.testing.assert_allclose(run(memory, source_mask, tgt), _logits(model, src, tgt), atol=1e-4)
