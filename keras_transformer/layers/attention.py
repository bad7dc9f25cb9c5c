"""Scaled dot-product attention (§3.2.1, eq. 1) and multi-head attention (§3.2.2).

Weights use the layout of `keras.layers.MultiHeadAttention` (query/key/value kernels
`[d_in, heads, head_dim]`, output kernel `[heads, head_dim, d_out]`), so weights move
between the two layers with `set_weights(get_weights())`.

For incremental decoding, `step` writes the current token's key and value into a
preallocated cache `[batch, heads, capacity, head_dim]` at a given index instead of
concatenating: shapes stay static, which XLA and TFLite builtins require.
"""

import math

import keras
from keras import ops

from keras_transformer import quantization
from keras_transformer.layers.dropout import Dropout
from keras_transformer.masks import combine_masks

# Added to the logits of masked keys. Finite, so a row whose keys are all masked
# becomes a uniform distribution instead of NaN.
_MASKED_LOGIT = -1e9


def scaled_dot_product_attention(query, key, value, mask=None, dropout=None, training=None):
    """softmax(QKᵀ/√d_k)V over `[batch, heads, length, head_dim]` tensors.

    `mask` is boolean, broadcastable to `[batch, heads, q_len, k_len]`, True = attend.
    The softmax runs in float32 whatever the compute dtype, so bfloat16 logits of
    nearby values do not collapse. Returns `(output, weights)`.
    """
    depth = ops.shape(query)[-1]
    query = query * ops.cast(1.0 / math.sqrt(depth), query.dtype)
    logits = ops.cast(ops.matmul(query, ops.swapaxes(key, -1, -2)), "float32")
    if mask is not None:
        logits = logits + ops.where(mask, 0.0, _MASKED_LOGIT)
    weights = ops.cast(ops.softmax(logits, axis=-1), value.dtype)
    dropped = dropout(weights, training=training) if dropout is not None else weights
    return ops.matmul(dropped, value), weights


def visible_entries(ancestry, index):
    """Which self-attention cache entries each hypothesis sees (`MultiHeadAttention.step`).

    `ancestry`: int `[sentences, beams, capacity]`, the beam whose cache entries hold
    each hypothesis' token at each slot (at slot `index`, its own beam). Returns bool
    `[sentences, beams, capacity · beams]`, True at entry s · beams + j where slot
    s ≤ `index` and `ancestry[..., s] == j`.

    Example: beam 1 took over beam 0's history at slot 0.
    >>> ancestry = keras.ops.convert_to_tensor([[[0, 0, 0], [0, 1, 0]]])
    >>> keras.ops.convert_to_numpy(visible_entries(ancestry, 1)).astype(int)[0]
    array([[1, 0, 1, 0, 0, 0],
           [1, 0, 0, 1, 0, 0]])
    """
    sentences, beams, capacity = (ops.shape(ancestry)[i] for i in range(3))
    # [sentences, beams, capacity, beams]: entry (s, j) holds this hypothesis' slot s
    mine = ops.equal(ops.expand_dims(ancestry, -1), ops.arange(beams))
    filled = ops.reshape(ops.less_equal(ops.arange(capacity), index), (1, 1, capacity, 1))
    return ops.reshape(ops.logical_and(mine, filled), (sentences, beams, capacity * beams))


@keras.saving.register_keras_serializable(package="keras_transformer")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention written for this project, with a key/value cache.

    Args:
        num_heads: number of heads h.
        key_dim: size of each head, d_k = d_v = d_model / h in the paper.
        dropout: dropout on the attention weights (0 in the paper).
        output_dim: size of the output; defaults to the query's last dimension.

    Masks are boolean with True = attend. `value_mask` (`[batch, k_len]`) is filled in
    by Keras from the value's padding mask; `attention_mask` (`[batch, q_len, k_len]`)
    and `use_causal_mask` add to it.

    Example:
    >>> mha = MultiHeadAttention(num_heads=2, key_dim=8)
    >>> x = keras.random.normal((3, 5, 16))
    >>> tuple(mha(x, x, use_causal_mask=True).shape)
    (3, 5, 16)
    """

    def __init__(self, num_heads, key_dim, dropout=0.0, output_dim=None,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.dropout = dropout
        self.output_dim = output_dim
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.attention_dropout = Dropout(dropout, dtype=self.dtype_policy)
        self.supports_masking = True

    def build(self, query_shape, value_shape=None, key_shape=None):
        value_shape = query_shape if value_shape is None else value_shape
        key_shape = value_shape if key_shape is None else key_shape
        heads = (self.num_heads, self.key_dim)
        self.query_kernel, self.query_bias = self._dense_weights("query", query_shape[-1], heads)
        self.key_kernel, self.key_bias = self._dense_weights("key", key_shape[-1], heads)
        self.value_kernel, self.value_bias = self._dense_weights("value", value_shape[-1], heads)
        out_dim = self.output_dim or query_shape[-1]
        self.output_kernel = self.add_weight(
            name="output_kernel", shape=heads + (out_dim,), initializer=self._initializer(3)
        )
        self.output_bias = self.add_weight(name="output_bias", shape=(out_dim,), initializer="zeros")

    def _initializer(self, number):
        """A copy of `kernel_initializer` for the number-th kernel.

        A Keras initializer fixes its seed when it is made, so one instance returns the
        same values at every call: shared by Q, K and V, it started all three equal (and
        the attention logits symmetric). Unseeded copies draw new seeds; a seeded one
        gives each kernel its own seed (seed + number), still reproducible.
        """
        config = self.kernel_initializer.get_config()
        if isinstance(config.get("seed"), int):
            config["seed"] += number
        return self.kernel_initializer.__class__.from_config(config)

    def _dense_weights(self, name, input_dim, heads):
        number = ("query", "key", "value").index(name)
        kernel = self.add_weight(
            name=f"{name}_kernel", shape=(input_dim,) + heads, initializer=self._initializer(number)
        )
        bias = self.add_weight(name=f"{name}_bias", shape=heads, initializer="zeros")
        return kernel, bias

    def _projection(self, parts):
        """The kernels of `parts` ("query", "key", "value") side by side as one 2-D matrix
        `[d_in, len(parts) * heads * head_dim]` and its bias, in the compute dtype.

        Every projection runs as one 2-D matmul on this matrix. Measured on a CPU, that
        beat `einsum("btd,dhk->bhtk")` on the 3-D kernels by ~1.5x in float32 and ~20x
        in bfloat16 (forward + backward), and fusing Q, K and V into one matmul saves
        a further ~25 %.
        """
        width = self.num_heads * self.key_dim

        def prepared(name, shape):  # in the compute dtype, as a layer call would read it
            return ops.cast(ops.reshape(getattr(self, name), shape), self.compute_dtype)

        kernel = ops.concatenate([prepared(f"{p}_kernel", (-1, width)) for p in parts], 1)
        bias = ops.concatenate([prepared(f"{p}_bias", (width,)) for p in parts], 0)
        return kernel, bias

    def _flat_heads(self, x, kernel, bias, parts):
        """`[batch, length, d]` @ 2-D kernel → `parts` tensors `[batch, heads, length, head_dim]`."""
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        y = quantization.matmul(x, kernel) + bias
        y = ops.reshape(y, (batch, length, parts, self.num_heads, self.key_dim))
        y = ops.transpose(y, (2, 0, 3, 1, 4))
        return [y[i] for i in range(parts)]

    def project_key_value(self, key, value=None):
        """Keys and values in head layout; for cross-attention, computed once per source."""
        if value is None or value is key:
            return tuple(self._flat_heads(key, *self._projection(("key", "value")), 2))
        return (self._flat_heads(key, *self._projection(("key",)), 1)[0],
                self._flat_heads(value, *self._projection(("value",)), 1)[0])

    def attend(self, query, key_heads, value_heads, mask=None, training=None, kernels=None):
        """Attend from `query` `[batch, q_len, d]` to projected keys/values.

        `mask`: bool `[batch, q_len, k_len]` or None. `kernels`: optional
        `step_kernels(fuse_key_value=False)` (same result, faster inside a decoding loop).
        Returns `(output, weights)`.
        """
        kernels = kernels or self.step_kernels(fuse_key_value=False)
        query_heads = self._flat_heads(query, kernels["query"], kernels["query_bias"], 1)[0]
        return self._attend_heads(query_heads, key_heads, value_heads, mask, training, kernels)

    def _attend_heads(self, query_heads, key_heads, value_heads, mask, training, kernels):
        if mask is not None:
            mask = ops.expand_dims(mask, 1)  # broadcast over heads
        context, weights = scaled_dot_product_attention(
            query_heads, key_heads, value_heads, mask, self.attention_dropout, training
        )
        batch, length = ops.shape(context)[0], ops.shape(context)[2]
        context = ops.reshape(ops.transpose(context, (0, 2, 1, 3)), (batch, length, -1))
        return quantization.matmul(context, kernels["output"]) + kernels["output_bias"], weights

    def step_kernels(self, fuse_key_value=True, weights="float32"):
        """The projection weights as 2-D matrices, to prepare once before a decoding loop.

        Under XLA on CPU, a `[d, heads, head_dim]` kernel reshaped inside a `while_loop`
        ran ~6x slower at batch 1 than the same matrix made 2-D outside the loop.
        `fuse_key_value=False` (cross-attention, whose keys and values are cached)
        prepares the query projection alone; `weights="int8"` quantizes the matrices
        (`quantization.quantize_kernel`).
        """
        parts = ("query", "key", "value") if fuse_key_value else ("query",)
        query, query_bias = self._projection(parts)
        width = self.num_heads * self.key_dim
        output = ops.cast(ops.reshape(self.output_kernel, (width, -1)), self.compute_dtype)
        return {
            "query": quantization.prepare(query, weights),
            "query_bias": query_bias,
            "output": quantization.prepare(output, weights),
            "output_bias": ops.cast(self.output_bias, self.compute_dtype),
        }

    def call(self, query, value, key=None, value_mask=None, key_mask=None, attention_mask=None,
             use_causal_mask=False, return_attention_scores=False, training=None):
        key = value if key is None else key
        mask = combine_masks(ops.shape(query)[1], ops.shape(key)[1],
                             value_mask if key_mask is None else key_mask,
                             attention_mask, use_causal_mask)
        if query is key and key is value:  # self-attention: one fused Q/K/V matmul
            kernels = self.step_kernels(fuse_key_value=True)
            heads = self._flat_heads(query, kernels["query"], kernels["query_bias"], 3)
            output, weights = self._attend_heads(*heads, mask, training, kernels)
        else:
            output, weights = self.attend(query, *self.project_key_value(key, value), mask,
                                          training)
        return (output, weights) if return_attention_scores else output

    def step(self, query, cache_key, cache_value, index, kernels=None, visible=None):
        """One decoding step of causal self-attention with a preallocated cache.

        The batch holds `beam_size` hypotheses a sentence (rows sentence · beam_size +
        beam; beam_size = query rows / cache rows, 1 for greedy). The cache has one row a
        sentence and `capacity · beam_size` entries: slot s of beam j is entry
        s · beam_size + j. A hypothesis attends to its own history through `visible`, so
        beam search never reorders the cache when hypotheses change places: it keeps,
        per hypothesis and slot, which beam's entry holds its history (its ancestry).
        Each hypothesis then attends over all beam_size · capacity entries, masked to its
        own: beam_size times the attention products, cheaper than the reorder (a 128-row
        beam step on 2 AMX Xeon cores: the reorder took 1.40 ms, the wider attention
        costs 0.7 ms more; `bench/step_profile.py`).

        Args:
            query: `[sentences · beam_size, 1, d]`, the input at position `index`.
            cache_key, cache_value: `[sentences, heads, capacity · beam_size, head_dim]`.
            index: scalar int, the position being decoded; written to slot `index`.
            kernels: optional `step_kernels()`, prepared once outside the loop.
            visible: bool, broadcastable to `[sentences, beam_size, capacity · beam_size]`:
                the entries each hypothesis attends to (`visible_entries`). Default: beam
                j sees beam j's slots up to `index` (its history never moved).

        Returns `(output [rows, 1, d], weights, new_cache_key, new_cache_value)`.
        """
        if kernels is None:
            kernels = self.step_kernels()
        sentences, entries = ops.shape(cache_key)[0], ops.shape(cache_key)[2]
        beams = ops.shape(query)[0] // sentences
        query_heads, key, value = self._flat_heads(
            query, kernels["query"], kernels["query_bias"], 3
        )

        def by_sentence(x):  # [rows, heads, 1, head_dim] → [sentences, heads, beams, head_dim]
            x = ops.reshape(x, (sentences, beams, self.num_heads, self.key_dim))
            return ops.transpose(x, (0, 2, 1, 3))

        # Written in place (XLA DynamicUpdateSlice, a TFLite builtin): a one-hot select
        # rewrote the whole cache at every step. The beams of slot `index` are adjacent.
        start = (0, 0, index * beams, 0)
        key, value = (ops.cast(by_sentence(x), cache_key.dtype) for x in (key, value))
        cache_key = ops.slice_update(cache_key, start, key)
        cache_value = ops.slice_update(cache_value, start, value)
        if visible is None:
            entry = ops.arange(entries)
            own = ops.equal(entry % beams, ops.expand_dims(ops.arange(beams), 1))  # [beams, entries]
            visible = ops.expand_dims(ops.logical_and(own, entry // beams <= index), 0)
        output, weights = self._attend_heads(
            by_sentence(query_heads), cache_key, cache_value, visible, None, kernels
        )                                                            # [sentences, beams, d]
        output = ops.reshape(output, (-1, 1, ops.shape(output)[-1]))  # [rows, 1, d]
        return output, weights, cache_key, cache_value

    def compute_output_shape(self, query_shape, value_shape=None, key_shape=None):
        return tuple(query_shape[:-1]) + (self.output_dim or query_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            key_dim=self.key_dim,
            dropout=self.dropout,
            output_dim=self.output_dim,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config

