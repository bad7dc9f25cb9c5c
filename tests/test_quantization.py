"""Int8 decoding (`DecodingOptions(weights="int8")`): the products, the decoder, the options."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_transformer import decoding, quantization
from keras_transformer.decoding_options import DecodingOptions
from keras_transformer.tokenizer import SubwordTokenizer
from keras_transformer.training import streaming
from keras_transformer.training.config import ConfigError, parse_config


def test_int8_matmul_is_exact_on_integer_operands():
    """Rows and columns whose largest |value| is 127 quantize to themselves: the int8
    product then equals the float one exactly (eager and under XLA)."""
    rng = np.random.default_rng(0)
    x = rng.integers(-127, 128, (5, 3, 64)).astype(np.float32)
    w = rng.integers(-127, 128, (64, 40)).astype(np.float32)
    x[..., 0], w[0] = 127, -127
    expected = np.einsum("btd,dn->btn", x.astype(np.int64), w.astype(np.int64))
    kernel = quantization.quantize_kernel(w)
    assert kernel["int8"].dtype == tf.int8
    for run in (quantization.matmul, tf.function(quantization.matmul, jit_compile=True)):
        np.testing.assert_array_equal(run(tf.constant(x), kernel), expected.astype(np.float32))


def test_int8_matmul_error_is_bounded_by_the_quantization_steps():
    """|error| ≤ what half a step on each operand can cost: Σ|x|·s_w/2 + Σ|w|·s_x/2 + d·s_x·s_w/4."""
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(32, 128)).astype(np.float32), rng.normal(size=(128, 300)).astype(np.float32)
    w[:, 7] = 0.0  # an all-zero column stays zero
    got = quantization.matmul(tf.constant(x), quantization.quantize_kernel(w)).numpy()
    s_x = np.abs(x).max(1, keepdims=True) / 127
    s_w = np.abs(w).max(0, keepdims=True) / 127
    s_w[s_w == 0] = 1.0
    bound = (np.abs(x).sum(1, keepdims=True) * s_w / 2 + s_x * np.abs(w).sum(0, keepdims=True) / 2
             + 128 * s_x * s_w / 4)
    assert np.all(np.abs(got - x @ w) <= bound * 1.0001 + 1e-5)
    assert np.all(got[:, 7] == 0.0)
    assert np.abs(got - x @ w).max() > 0  # int8 really ran: not exact on normal values


def test_weights_option_is_checked():
    with pytest.raises(ValueError, match="weights must be one of"):
        DecodingOptions(weights="int4")
    assert DecodingOptions.from_dict({"weights": "int8"}).weights == "int8"
    with pytest.raises(ValueError, match="must be one of"):
        quantization.prepare(tf.ones([2, 2]), "float16")


@pytest.fixture(scope="module")
def trained(tiny_run):
    model = keras.models.load_model(os.path.join(tiny_run, "model.keras"))
    tokenizer = SubwordTokenizer.load(os.path.join(tiny_run, "tokenizer.model"))
    sources, _ = streaming.read_parallel(*streaming.multi30k_paths("test_2016_flickr", "en", "de"))
    return model, tokenizer.tokenize(sources[:16]).to_tensor(), tiny_run


def test_int8_step_logits_follow_float(trained):
    """One decoding step with int8 kernels: logits within a small fraction of their
    spread of the float ones, and the same best token for most rows."""
    model, source_ids, _ = trained
    memory, mask = model.encode(source_ids, training=False)
    tokens = tf.fill([source_ids.shape[0]], 1)
    logits = {}
    for weights in ("float32", "int8"):
        cache = model.init_cache(memory, 8)
        logits[weights], _ = model.decode_step(tokens, 0, cache, mask, model.step_kernels(weights))
    f32, i8 = logits["float32"].numpy(), logits["int8"].numpy()
    assert np.abs(i8 - f32).max() < 0.05 * f32.std(axis=-1).min()
    assert np.mean(i8.argmax(-1) == f32.argmax(-1)) >= 0.9


@pytest.mark.parametrize("beam_size", [1, 4])
def test_int8_decoder_under_xla_equals_eager_and_tracks_float(trained, beam_size):
    model, source_ids, _ = trained
    options = DecodingOptions(beam_size=beam_size, max_extra_length=10, weights="int8")

    def run(ids):
        return decoding.decode(model, ids, 40, options)[0]

    eager = run(source_ids).numpy()
    np.testing.assert_array_equal(tf.function(run, jit_compile=True)(source_ids), eager)
    float_ids = decoding.decode(model, source_ids, 40, options.replace(weights="float32"))[0]
    assert np.mean(np.all(eager == float_ids.numpy(), axis=1)) >= 0.5  # whole sentences alike


def test_config_weights_reach_the_decoder():
    config = parse_config({"evaluation": {"weights": "int8"}})
    assert config.evaluation.decoding_options().weights == "int8"
    with pytest.raises(ConfigError, match="weights"):
        parse_config({"evaluation": {"weights": "int4"}})
