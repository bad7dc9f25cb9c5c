"""Position-wise feed-forward network (§3.3): FFN(x) = max(0, xW₁ + b₁)W₂ + b₂."""

import keras

from keras_transformer.layers.dropout import Dropout


@keras.saving.register_keras_serializable(package="keras_transformer")
class PositionwiseFeedForward(keras.layers.Layer):
    """Two dense layers with a ReLU between, applied to each position alike.

    Args:
        d_ff: inner size (2048 in the base model).
        activation_dropout: dropout after the ReLU (0 in the paper).
        activation: the inner non-linearity; "relu" as in the paper.

    Example:
    >>> ffn = PositionwiseFeedForward(d_ff=64)
    >>> tuple(ffn(keras.ops.ones((2, 7, 16))).shape)
    (2, 7, 16)
    """

    def __init__(self, d_ff, activation_dropout=0.0, activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.d_ff = d_ff
        self.activation_dropout = activation_dropout
        self.activation = activation
        self.inner = keras.layers.Dense(d_ff, activation=activation, name="inner",
                                        dtype=self.dtype_policy)
        self.dropout = Dropout(activation_dropout, dtype=self.dtype_policy)
        self.supports_masking = True

    def build(self, input_shape):
        self.inner.build(input_shape)
        self.outer = keras.layers.Dense(input_shape[-1], name="outer", dtype=self.dtype_policy)
        self.outer.build(tuple(input_shape[:-1]) + (self.d_ff,))

    def call(self, x, training=None):
        return self.outer(self.dropout(self.inner(x), training=training))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(d_ff=self.d_ff, activation_dropout=self.activation_dropout,
                      activation=self.activation)
        return config
