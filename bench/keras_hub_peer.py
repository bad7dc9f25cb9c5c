"""The peer: an encoder-decoder of keras-hub layers, trained with fit, decoded by its samplers.

Same size as the "small" preset (3 + 3 layers, d_model 256, 4 heads, d_ff 1024, post-norm,
vocab 8000). Generation follows keras-hub's own Seq2SeqLM recipe (BART's `generate_step`):
encode, seed the per-layer self- and cross-attention caches with one decoder pass over the
padded prompt, then let `GreedySampler` / `BeamSampler` call `next` once per new token with
the cache index. `training_model` is the same stack as a functional `keras.Model` for
bench/train.py. Needs `pip install -e ".[bench]"`.
"""

import keras
import keras_hub
import tensorflow as tf
from keras import ops

BOS_ID = 2


class KerasHubSeq2Seq:
    def __init__(self, vocab_size=8000, layers=3, d_model=256, heads=4, d_ff=1024, max_len=128):
        self.heads, self.head_dim = heads, d_model // heads
        self.source_embedding = keras_hub.layers.TokenAndPositionEmbedding(
            vocab_size, max_len, d_model)
        self.target_embedding = keras_hub.layers.TokenAndPositionEmbedding(
            vocab_size, max_len, d_model)
        self.encoders = [keras_hub.layers.TransformerEncoder(d_ff, heads) for _ in range(layers)]
        self.decoders = [keras_hub.layers.TransformerDecoder(d_ff, heads) for _ in range(layers)]
        self.logits = keras.layers.Dense(vocab_size)

    def encode(self, source_ids):
        mask = ops.not_equal(source_ids, 0)
        x = self.source_embedding(source_ids)
        for layer in self.encoders:
            x = layer(x, padding_mask=mask)
        return x, mask

    def decode_with_cache(self, token_ids, memory, memory_mask, caches, index, seed):
        """Run the decoder on `token_ids` starting at `index`; update the caches."""
        tokens = self.target_embedding.token_embedding(token_ids)
        x = tokens + self.target_embedding.position_embedding(tokens, start_index=index)
        new_caches = []
        for layer, (self_cache, cross_cache) in zip(self.decoders, caches):
            x, self_cache, cross_cache = layer(
                x, memory, encoder_padding_mask=memory_mask,
                self_attention_cache=self_cache, self_attention_cache_update_index=index,
                cross_attention_cache=cross_cache,
                cross_attention_cache_update_index=0 if seed else None)
            new_caches.append((self_cache, cross_cache))
        return self.logits(x), x, tuple(new_caches)

    def generate(self, source_ids, new_tokens, sampler):
        """`new_tokens` ids per sentence after bos (no stop token: always the full length)."""
        batch, source_len = ops.shape(source_ids)[0], ops.shape(source_ids)[1]
        memory, memory_mask = self.encode(source_ids)
        length = new_tokens + 1
        prompt = tf.pad(tf.fill([batch, 1], BOS_ID), [[0, 0], [0, new_tokens]])
        prompt_mask = ops.arange(length)[None, :] < 1
        prompt_mask = ops.broadcast_to(prompt_mask, (batch, length))

        def empty(n):
            return ops.zeros((batch, 2, n, self.heads, self.head_dim))

        caches = tuple((empty(length), empty(source_len)) for _ in self.decoders)
        _, hidden, caches = self.decode_with_cache(prompt, memory, memory_mask, caches, 0, True)

        def next(prompt, cache, index):
            caches, memory, memory_mask = cache
            token = ops.slice(prompt, [0, index - 1], [ops.shape(prompt)[0], 1])
            logits, hidden, caches = self.decode_with_cache(
                token, memory, memory_mask, caches, index - 1, False)
            return logits[:, 0], hidden[:, 0], (caches, memory, memory_mask)

        return sampler(next=next, prompt=prompt, cache=(caches, memory, memory_mask), index=1,
                       mask=prompt_mask, hidden_states=hidden)


def compiled_decoders(peer, new_tokens):
    """XLA-compiled greedy and beam-4 generation, keyed like bench/decode.py's rows."""
    greedy = keras_hub.samplers.GreedySampler()
    beam = keras_hub.samplers.BeamSampler(num_beams=4)
    return {
        "keras-hub GreedySampler, XLA": tf.function(
            lambda s: peer.generate(s, new_tokens, greedy), jit_compile=True),
        "keras-hub BeamSampler 4, XLA": tf.function(
            lambda s: peer.generate(s, new_tokens, beam), jit_compile=True),
    }


def training_model(config, max_len=128):
    """Functional keras-hub seq2seq with the sizes of a `TransformerConfig`, for `model.fit`.

    Inputs `(source_ids, target_in_ids)`, output logits `[batch, tgt_len, vocab]`; separate
    source/target embeddings with learned positions and a Dense head, as keras-hub builds it.
    """
    source = keras.Input((None,), dtype="int32", name="source_ids")
    target = keras.Input((None,), dtype="int32", name="target_ids")
    layer_args = dict(intermediate_dim=config.d_ff, num_heads=config.num_heads,
                      dropout=config.dropout)
    x = keras_hub.layers.TokenAndPositionEmbedding(
        config.vocab_size, max_len, config.d_model, mask_zero=True)(source)
    for _ in range(config.num_encoder_layers):
        x = keras_hub.layers.TransformerEncoder(**layer_args)(x)
    y = keras_hub.layers.TokenAndPositionEmbedding(
        config.output_vocab_size, max_len, config.d_model, mask_zero=True)(target)
    for _ in range(config.num_decoder_layers):
        y = keras_hub.layers.TransformerDecoder(**layer_args)(y, encoder_sequence=x)
    logits = keras.layers.Dense(config.output_vocab_size)(y)
    return keras.Model([source, target], logits)
