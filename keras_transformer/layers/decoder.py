"""Decoder layer and stack (§3.1, fig. 1 right), with cached incremental decoding.

Each layer has masked (causal) self-attention, attention over the encoder output
("memory"), and a feed-forward network, each in a residual block (see encoder.py).
`step` decodes one position using a preallocated per-layer cache:
`{"key", "value"}` `[batch * beams, heads, max_length, head_dim]` for self-attention,
and `{"cross_key", "cross_value"}` `[batch, heads, src_len, head_dim]` computed once
from the memory and shared by a sentence's beams.
"""

import keras
from keras import ops

from keras_transformer import quantization
from keras_transformer.layers.encoder import _ResidualLayer, _Stack


@keras.saving.register_keras_serializable(package="keras_transformer")
class DecoderLayer(_ResidualLayer):
    """Causal self-attention, cross-attention to the memory, then feed-forward.

    Example:
    >>> layer = DecoderLayer(num_heads=2, d_ff=32)
    >>> x, memory = keras.ops.ones((2, 4, 16)), keras.ops.ones((2, 6, 16))
    >>> tuple(layer(x, memory).shape)
    (2, 4, 16)
    """

    def build(self, x_shape, memory_shape=None):
        memory_shape = x_shape if memory_shape is None else memory_shape
        self.self_attention = self._attention("self_attention", x_shape[-1])
        self.self_attention.build(x_shape, x_shape)
        self.self_attention_norm = self._norm("self_attention_norm", x_shape)
        self.cross_attention = self._attention("cross_attention", x_shape[-1])
        self.cross_attention.build(x_shape, memory_shape)
        self.cross_attention_norm = self._norm("cross_attention_norm", x_shape)
        self.feed_forward = self._feed_forward(x_shape)
        self.feed_forward_norm = self._norm("feed_forward_norm", x_shape)

    def call(self, x, memory, x_mask=None, memory_mask=None, training=None,
             return_attention_scores=False):
        def self_attend(h):
            return self.self_attention(h, h, value_mask=x_mask, use_causal_mask=True,
                                       training=training, return_attention_scores=True)

        def cross_attend(h):
            return self.cross_attention(h, memory, value_mask=memory_mask, training=training,
                                        return_attention_scores=True)

        x, self_weights = self._residual(x, self.self_attention_norm, self_attend, training)
        x, cross_weights = self._residual(x, self.cross_attention_norm, cross_attend, training)
        x = self._feed_forward_block(x, training)
        if return_attention_scores:
            return x, {"self": self_weights, "cross": cross_weights}
        return x

    def _feed_forward_block(self, x, training=None):
        x, _ = self._residual(
            x, self.feed_forward_norm, lambda h: (self.feed_forward(h, training=training), None),
            training,
        )
        return x

    def init_cache(self, memory, max_length, beam_size=1):
        """This layer's cache for decoding up to `max_length` tokens against `memory`.

        Cross-attention keys and values are projected once per sentence
        (`[batch, heads, src_len, head_dim]`); the self-attention cache holds the
        `beam_size` hypotheses of a sentence side by side, slot by slot
        (`[batch, heads, max_length * beam_size, head_dim]`; see
        `MultiHeadAttention.step`).
        """
        cross_key, cross_value = self.cross_attention.project_key_value(memory)
        shape = (ops.shape(memory)[0], self.num_heads, max_length * beam_size,
                 ops.shape(cross_key)[-1])
        empty = ops.zeros(shape, dtype=cross_key.dtype)
        return {"key": empty, "value": empty, "cross_key": cross_key, "cross_value": cross_value}

    def step_kernels(self, weights="float32"):
        """The weights in the 2-D form `step` runs fastest with (see attention.py);
        `weights="int8"` quantizes the matrices (`quantization`)."""
        ffn = self.feed_forward
        return {"self": self.self_attention.step_kernels(weights=weights),
                "cross": self.cross_attention.step_kernels(fuse_key_value=False, weights=weights),
                "inner": quantization.prepare(ffn.inner.kernel, weights),
                "inner_bias": ffn.inner.bias,
                "outer": quantization.prepare(ffn.outer.kernel, weights),
                "outer_bias": ffn.outer.bias}

    def step(self, x, cache, index, memory_mask=None, kernels=None, visible=None):
        """Decode position `index`: `x` is `[batch, 1, d]`. Returns `(x, cache, weights)`.

        `kernels`: `step_kernels()` prepared once before the decoding loop (optional);
        `visible`: the self-attention cache entries each hypothesis sees
        (`MultiHeadAttention.step`).
        """
        kernels = self.step_kernels() if kernels is None else kernels
        new_cache = dict(cache)

        def self_attend(h):
            out, weights, new_cache["key"], new_cache["value"] = self.self_attention.step(
                h, cache["key"], cache["value"], index, kernels["self"], visible
            )
            return out, weights

        def cross_attend(h):
            # The k hypotheses of a sentence share its source: attend with them as k
            # queries against one copy of its keys/values (one matmul, not k).
            rows, width = ops.shape(h)[0], ops.shape(h)[-1]
            queries = ops.reshape(h, (ops.shape(cache["cross_key"])[0], -1, width))
            mask = None if memory_mask is None else ops.expand_dims(memory_mask, 1)
            out, weights = self.cross_attention.attend(
                queries, cache["cross_key"], cache["cross_value"], mask, kernels=kernels["cross"]
            )
            return ops.reshape(out, (rows, 1, width)), weights

        x, self_weights = self._residual(x, self.self_attention_norm, self_attend, False)
        x, cross_weights = self._residual(x, self.cross_attention_norm, cross_attend, False)
        x, _ = self._residual(x, self.feed_forward_norm,
                              lambda h: (self._feed_forward_step(h, kernels), None), False)
        return x, new_cache, {"self": self_weights, "cross": cross_weights}

    def _feed_forward_step(self, h, kernels):
        """The feed-forward network on `step_kernels` (float or int8; no dropout)."""
        ffn = self.feed_forward
        inner = quantization.matmul(h, kernels["inner"]) + ops.cast(kernels["inner_bias"], h.dtype)
        inner = keras.activations.get(ffn.activation)(inner)
        return quantization.matmul(inner, kernels["outer"]) + ops.cast(kernels["outer_bias"],
                                                                        h.dtype)


@keras.saving.register_keras_serializable(package="keras_transformer")
class TransformerDecoder(_Stack):
    """The decoder stack: `num_layers` DecoderLayers over embedded target tokens.

    `call(x, memory, x_mask, memory_mask)` runs the whole (teacher-forced) target at
    once; `init_cache` + `step` decode one position at a time with identical results.

    Example:
    >>> decoder = TransformerDecoder(num_layers=2, num_heads=2, d_ff=32)
    >>> x, memory = keras.ops.ones((2, 4, 16)), keras.ops.ones((2, 6, 16))
    >>> tuple(decoder(x, memory).shape)
    (2, 4, 16)
    """

    layer_class = DecoderLayer

    def build(self, x_shape, memory_shape=None):
        self._build_stack(x_shape, x_shape if memory_shape is None else memory_shape)

    def call(self, x, memory, x_mask=None, memory_mask=None, training=None,
             return_attention_scores=False):
        all_weights = []
        for layer in self.blocks:
            x, weights = layer(x, memory, x_mask=x_mask, memory_mask=memory_mask,
                               training=training, return_attention_scores=True)
            all_weights.append(weights)
        x = self._finish(x)
        return (x, all_weights) if return_attention_scores else x

    def init_cache(self, memory, max_length, beam_size=1):
        """A list with one cache dict per layer (see `DecoderLayer.init_cache`)."""
        return [layer.init_cache(memory, max_length, beam_size) for layer in self.blocks]

    def step_kernels(self, weights="float32"):
        """One `DecoderLayer.step_kernels(weights)` per layer, to prepare before a
        decoding loop."""
        return [layer.step_kernels(weights) for layer in self.blocks]

    def step(self, x, cache, index, memory_mask=None, kernels=None, visible=None):
        """Decode position `index` through all layers. Returns `(x, cache, weights)`."""
        kernels = self.step_kernels() if kernels is None else kernels
        new_cache, all_weights = [], []
        for layer, layer_cache, layer_kernels in zip(self.blocks, cache, kernels):
            x, layer_cache, weights = layer.step(x, layer_cache, index, memory_mask,
                                                 layer_kernels, visible)
            new_cache.append(layer_cache)
            all_weights.append(weights)
        return self._finish(x), new_cache, all_weights
