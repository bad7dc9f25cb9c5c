"""Sinusoidal positional encoding (§3.5).

PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model)):
sine on even dimensions, cosine on odd ones, for any length, with no weights.
"""

import keras
from keras import ops


def sinusoids(length, d_model, start=0, max_wavelength=10000.0, dtype="float32"):
    """The `[length, d_model]` table of positions `start .. start + length - 1`."""
    positions = ops.cast(ops.arange(length) + start, "float32")
    dims = ops.arange(d_model)
    even_dims = ops.cast(dims - dims % 2, "float32")  # 2i for both 2i and 2i+1
    rates = ops.power(float(max_wavelength), -even_dims / float(d_model))
    angles = ops.expand_dims(positions, 1) * ops.expand_dims(rates, 0)
    table = ops.where(ops.expand_dims(dims % 2 == 0, 0), ops.sin(angles), ops.cos(angles))
    return ops.cast(table, dtype)


@keras.saving.register_keras_serializable(package="keras_transformer")
class SinusoidalPositionalEncoding(keras.layers.Layer):
    """Adds the sinusoid of each position to `[batch, length, d_model]` inputs.

    `call(x, start=t)` encodes positions t, t+1, … (used when decoding token by token).
    The input's padding mask passes through.

    Example:
    >>> pe = SinusoidalPositionalEncoding()
    >>> tuple(pe(keras.ops.zeros((1, 4, 8))).shape)
    (1, 4, 8)
    """

    def __init__(self, max_wavelength=10000.0, **kwargs):
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength
        self.supports_masking = True
        self.built = True

    def call(self, x, start=0):
        shape = ops.shape(x)
        table = sinusoids(shape[1], shape[2], start, self.max_wavelength, x.dtype)
        return x + ops.expand_dims(table, 0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(max_wavelength=self.max_wavelength)
        return config
