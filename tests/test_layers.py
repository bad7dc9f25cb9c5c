"""Layer-level checks: sinusoids, attention vs Keras, masking, serialization."""

import keras
import numpy as np
import pytest

from keras_transformer.layers import (
    MultiHeadAttention,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
    TransformerEncoder,
    sinusoids,
)
from keras_transformer.layers.attention import scaled_dot_product_attention, visible_entries
from tests.conftest import random_ids


@pytest.mark.parametrize("length,d_model", [(1, 2), (50, 16), (7, 33), (300, 512)])
def test_sinusoids_match_paper_formula(length, d_model):
    expected = np.zeros((length, d_model))
    for pos in range(length):
        for dim in range(d_model):
            angle = pos / 10000 ** ((dim - dim % 2) / d_model)
            expected[pos, dim] = np.sin(angle) if dim % 2 == 0 else np.cos(angle)
    table = keras.ops.convert_to_numpy(sinusoids(length, d_model))
    np.testing.assert_allclose(table, expected, atol=2e-4)


def test_sinusoids_offset_equals_slice():
    full = keras.ops.convert_to_numpy(sinusoids(20, 8))
    part = keras.ops.convert_to_numpy(sinusoids(5, 8, start=11))
    np.testing.assert_allclose(part, full[11:16], atol=1e-5)


def test_positional_encoding_adds_table():
    x = np.random.default_rng(0).normal(size=(2, 6, 8)).astype("float32")
    out = keras.ops.convert_to_numpy(SinusoidalPositionalEncoding()(x))
    np.testing.assert_allclose(out - x, np.broadcast_to(sinusoids(6, 8), x.shape), atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_equals_keras_multi_head_attention(causal):
    rng = np.random.default_rng(0)
    query = rng.normal(size=(3, 5, 16)).astype("float32")
    value = rng.normal(size=(3, 7, 12)).astype("float32")
    if causal:
        value = rng.normal(size=(3, 5, 16)).astype("float32")
    mask = rng.random((3, 5, value.shape[1])) > 0.3
    mask[:, :, 0] = True  # keep one key per row so both softmaxes are defined
    reference = keras.layers.MultiHeadAttention(num_heads=4, key_dim=6)
    expected, expected_weights = reference(query, value, attention_mask=mask,
                                           use_causal_mask=causal, return_attention_scores=True)
    ours = MultiHeadAttention(num_heads=4, key_dim=6)
    ours.build(query.shape, value.shape)
    assert [w.shape for w in ours.get_weights()] == [w.shape for w in reference.get_weights()]
    ours.set_weights(reference.get_weights())
    got, weights = ours(query, value, attention_mask=mask, use_causal_mask=causal,
                        return_attention_scores=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(weights, expected_weights, atol=1e-6)


def test_attention_padding_mask_ignores_padded_keys():
    rng = np.random.default_rng(1)
    query = rng.normal(size=(2, 4, 8)).astype("float32")
    value = rng.normal(size=(2, 6, 8)).astype("float32")
    key_mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], bool)
    layer = MultiHeadAttention(num_heads=2, key_dim=4)
    out, weights = layer(query, value, value_mask=key_mask, return_attention_scores=True)
    assert np.all(np.asarray(weights)[~np.broadcast_to(key_mask[:, None, None], weights.shape)] < 1e-6)
    changed = value.copy()
    changed[~key_mask] = 100.0  # garbage in the masked keys changes nothing
    np.testing.assert_allclose(layer(query, changed, value_mask=key_mask), out, atol=1e-5)


def test_fully_masked_row_is_finite():
    layer = MultiHeadAttention(num_heads=2, key_dim=4)
    x = np.ones((1, 3, 8), "float32")
    out = layer(x, x, value_mask=np.zeros((1, 3), bool))
    assert np.all(np.isfinite(out))


def _encoder_model(pad_id):
    ids = keras.Input((None,), dtype="int32")
    x = TokenEmbedding(vocab_size=40, d_model=16, pad_id=pad_id)(ids)
    x = SinusoidalPositionalEncoding()(x)
    out = TransformerEncoder(num_layers=2, num_heads=2, d_ff=32, dropout=0.0)(x)
    return keras.Model(ids, out)


def test_padding_mask_propagates_in_functional_model():
    rng = np.random.default_rng(2)
    src = random_ids(rng, 4, 6)
    padded = np.pad(src, ((0, 0), (0, 5)))
    real = src != 0

    def max_change(model):
        return np.abs(np.asarray(model(src))[real] - np.asarray(model(padded))[:, :6][real]).max()

    # The mask made by the embedding reaches every attention layer through Keras masking...
    assert max_change(_encoder_model(pad_id=0)) < 1e-5
    # ...and without it (no id is padding) the extra pads would change the outputs.
    assert max_change(_encoder_model(pad_id=-1)) > 1e-3


def test_layers_round_trip_through_get_config():
    layer = TransformerEncoder(num_layers=2, num_heads=2, d_ff=32, norm_first=True)
    clone = TransformerEncoder.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    attention = MultiHeadAttention(num_heads=3, key_dim=5, dropout=0.1)
    assert MultiHeadAttention.from_config(attention.get_config()).get_config() == attention.get_config()


@pytest.mark.parametrize("initializer", ["glorot_uniform",
                                         keras.initializers.GlorotUniform(seed=7)])
def test_attention_kernels_start_different(initializer):
    """One initializer instance repeats its values: shared by the query, key and value
    kernels it started them equal. Each kernel must get its own draw (seeded ones too)."""
    layer = MultiHeadAttention(num_heads=2, key_dim=8, kernel_initializer=initializer)
    x = keras.random.normal((1, 3, 16))
    layer(x, x)
    kernels = [layer.query_kernel, layer.key_kernel, layer.value_kernel]
    for i in range(3):
        for j in range(i):
            assert not np.allclose(kernels[i].numpy(), kernels[j].numpy())
    again = MultiHeadAttention(num_heads=2, key_dim=8, kernel_initializer=initializer)
    again(x, x)
    if not isinstance(initializer, str):  # a seeded initializer stays reproducible
        np.testing.assert_array_equal(again.key_kernel.numpy(), layer.key_kernel.numpy())


def test_attention_step_follows_each_hypothesis_ancestry():
    """Beam search never reorders the cache: a hypothesis attends to the entries its
    ancestry names. Equal to attending over its history gathered out explicitly."""
    sentences, beams, capacity, heads, depth = 2, 3, 5, 2, 4
    rng = np.random.default_rng(0)
    mha = MultiHeadAttention(num_heads=heads, key_dim=depth)
    rows = sentences * beams
    query = rng.normal(size=(rows, 1, heads * depth)).astype("float32")
    mha.build(query.shape)
    cache_key = rng.normal(size=(sentences, heads, capacity * beams, depth)).astype("float32")
    cache_value = rng.normal(size=cache_key.shape).astype("float32")
    index = 3
    ancestry = rng.integers(0, beams, size=(sentences, beams, capacity)).astype("int32")
    ancestry[:, :, index] = np.arange(beams)  # slot `index` is written by the hypothesis
    out, _, new_key, new_value = mha.step(query, cache_key, cache_value, index,
                                          visible=visible_entries(ancestry, index))
    new_key, new_value = keras.ops.convert_to_numpy(new_key), keras.ops.convert_to_numpy(new_value)
    # Reference: each hypothesis' keys/values slot by slot, then plain attention over them.
    expected = []
    for row in range(rows):
        sentence, beam = divmod(row, beams)
        entries = [s * beams + ancestry[sentence, beam, s] for s in range(index + 1)]
        keys = new_key[sentence][:, entries][None]                   # [1, heads, index + 1, depth]
        values = new_value[sentence][:, entries][None]
        q = keras.ops.convert_to_numpy(mha._flat_heads(
            query[row:row + 1], *mha._projection(("query",)), 1)[0])
        context, _ = scaled_dot_product_attention(q, keys, values)
        context = keras.ops.reshape(keras.ops.transpose(context, (0, 2, 1, 3)), (1, 1, -1))
        expected.append(keras.ops.convert_to_numpy(
            keras.ops.matmul(context, mha.step_kernels()["output"]) + mha.output_bias))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), np.concatenate(expected),
                               atol=1e-5)
    # The step wrote its own keys at slot `index` of each beam and nothing else.
    changed = np.any(new_key != cache_key, axis=(1, 3))                  # [sentences, entries]
    assert np.array_equal(np.flatnonzero(changed[0]), index * beams + np.arange(beams))
