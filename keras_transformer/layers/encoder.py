"""Encoder layer and stack (§3.1, fig. 1 left).

Each sub-layer is wrapped as LayerNorm(x + Dropout(Sublayer(x))) — post-LN, as in the
paper — or, with `norm_first=True`, x + Dropout(Sublayer(LayerNorm(x))) followed by a
final LayerNorm on the stack (pre-LN, which trains more stably without warmup).
"""

import keras

from keras_transformer.layers.attention import MultiHeadAttention
from keras_transformer.layers.dropout import Dropout
from keras_transformer.layers.feed_forward import PositionwiseFeedForward


class _ResidualLayer(keras.layers.Layer):
    """Shared wiring of encoder and decoder layers: residual + dropout + LayerNorm."""

    def __init__(self, num_heads, d_ff, dropout=0.1, attention_dropout=0.0,
                 activation_dropout=0.0, norm_first=False, layer_norm_epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.d_ff = d_ff
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.norm_first = norm_first
        self.layer_norm_epsilon = layer_norm_epsilon
        self.residual_dropout = Dropout(dropout, dtype=self.dtype_policy)
        self.supports_masking = True

    def _attention(self, name, d_model):
        return MultiHeadAttention(self.num_heads, d_model // self.num_heads,
                                  dropout=self.attention_dropout, name=name,
                                  dtype=self.dtype_policy)

    def _norm(self, name, input_shape):
        norm = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name=name,
                                               dtype=self.dtype_policy)
        norm.build(input_shape)
        return norm

    def _feed_forward(self, input_shape):
        ffn = PositionwiseFeedForward(self.d_ff, self.activation_dropout, name="feed_forward",
                                      dtype=self.dtype_policy)
        ffn.build(input_shape)
        return ffn

    def _residual(self, x, norm, sublayer, training):
        """Apply `sublayer` (which returns `(output, extras)`) inside the residual block."""
        if self.norm_first:
            output, extras = sublayer(norm(x))
            return x + self.residual_dropout(output, training=training), extras
        output, extras = sublayer(x)
        return norm(x + self.residual_dropout(output, training=training)), extras

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads, d_ff=self.d_ff, dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            activation_dropout=self.activation_dropout, norm_first=self.norm_first,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_transformer")
class EncoderLayer(_ResidualLayer):
    """Self-attention then feed-forward, each in a residual block.

    Example:
    >>> layer = EncoderLayer(num_heads=2, d_ff=32)
    >>> tuple(layer(keras.ops.ones((2, 5, 16))).shape)
    (2, 5, 16)
    """

    def build(self, input_shape):
        self.self_attention = self._attention("self_attention", input_shape[-1])
        self.self_attention.build(input_shape, input_shape)
        self.self_attention_norm = self._norm("self_attention_norm", input_shape)
        self.feed_forward = self._feed_forward(input_shape)
        self.feed_forward_norm = self._norm("feed_forward_norm", input_shape)

    def call(self, x, mask=None, training=None, return_attention_scores=False):
        def attend(h):
            return self.self_attention(h, h, value_mask=mask, training=training,
                                       return_attention_scores=True)

        x, weights = self._residual(x, self.self_attention_norm, attend, training)
        x, _ = self._residual(
            x, self.feed_forward_norm, lambda h: (self.feed_forward(h, training=training), None),
            training,
        )
        return (x, weights) if return_attention_scores else x


class _Stack(keras.layers.Layer):
    """N identical layers, with a final LayerNorm when they are pre-LN."""

    layer_class = None

    def __init__(self, num_layers, num_heads, d_ff, dropout=0.1, attention_dropout=0.0,
                 activation_dropout=0.0, norm_first=False, layer_norm_epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.num_layers = num_layers
        self.layer_kwargs = dict(
            num_heads=num_heads, d_ff=d_ff, dropout=dropout, attention_dropout=attention_dropout,
            activation_dropout=activation_dropout, norm_first=norm_first,
            layer_norm_epsilon=layer_norm_epsilon,
        )
        self.blocks = [
            self.layer_class(**self.layer_kwargs, name=f"layer_{i}", dtype=self.dtype_policy)
            for i in range(num_layers)
        ]
        self.final_norm = None
        if norm_first:
            self.final_norm = keras.layers.LayerNormalization(
                epsilon=layer_norm_epsilon, name="final_norm", dtype=self.dtype_policy
            )
        self.supports_masking = True

    def _build_stack(self, input_shape, *layer_shapes):
        for layer in self.blocks:
            layer.build(input_shape, *layer_shapes)
        if self.final_norm is not None:
            self.final_norm.build(input_shape)

    def _finish(self, x):
        return x if self.final_norm is None else self.final_norm(x)

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(num_layers=self.num_layers, **self.layer_kwargs)
        return config


@keras.saving.register_keras_serializable(package="keras_transformer")
class TransformerEncoder(_Stack):
    """The encoder stack: `num_layers` EncoderLayers over embedded source tokens.

    `call(x, mask)` takes `[batch, src_len, d_model]` and the source padding mask
    (filled in by Keras when `x` carries one). With `return_attention_scores=True` it
    also returns one `[batch, heads, src_len, src_len]` tensor per layer.

    Example:
    >>> encoder = TransformerEncoder(num_layers=2, num_heads=2, d_ff=32)
    >>> tuple(encoder(keras.ops.ones((2, 5, 16))).shape)
    (2, 5, 16)
    """

    layer_class = EncoderLayer

    def build(self, input_shape):
        self._build_stack(input_shape)

    def call(self, x, mask=None, training=None, return_attention_scores=False):
        all_weights = []
        for layer in self.blocks:
            x, weights = layer(x, mask=mask, training=training, return_attention_scores=True)
            all_weights.append(weights)
        x = self._finish(x)
        return (x, all_weights) if return_attention_scores else x
