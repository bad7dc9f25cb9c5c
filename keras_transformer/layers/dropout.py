"""Dropout (§5.4) whose random numbers are cheap under XLA on a CPU.

`keras.layers.Dropout` draws its mask with TensorFlow's default stateless generator
(Philox on a CPU). Inside an XLA cluster that generator is expanded into many scalar ops:
17 dropouts of `[64, 32, 256]` (the "small" preset's training step) took ~110 ms forward
and backward under XLA, the same masks drawn with the ThreeFry algorithm ~45 ms, and
ThreeFry with one 32-bit draw split into two 16-bit uniforms ~27 ms. Outside XLA,
ThreeFry has no CPU kernel and Philox is fast, so the layer keeps Keras's own path there
and on other backends.
"""

import keras


@keras.saving.register_keras_serializable(package="keras_transformer")
class Dropout(keras.layers.Dropout):
    """`keras.layers.Dropout` that uses the ThreeFry generator inside XLA-compiled functions.

    Same arguments, same expectation (units zeroed with probability `rate`, survivors
    scaled by 1 / (1 - rate)) and same seeding through the layer's `SeedGenerator`.
    Under XLA the drop probability is `rate` rounded to a multiple of 2^-16 (the
    survivors' scale uses the rounded value, so the expectation stays exact).

    Example:
    >>> layer = Dropout(0.5, seed=1)
    >>> x = keras.ops.ones((2, 4))
    >>> bool(keras.ops.all(layer(x, training=False) == x))
    True
    """

    def call(self, inputs, training=False):
        if not training or self.rate == 0 or self.noise_shape is not None \
                or not _in_xla_cluster():
            return super().call(inputs, training=training)
        import tensorflow as tf

        seed = tf.cast(self.seed_generator.next(), "int64")
        threshold = round(self.rate * 2**16)
        keep = _uniform_16_bits(tf.shape(inputs), seed) >= threshold
        scale = tf.cast(2**16 / (2**16 - threshold), inputs.dtype)
        return tf.where(keep, inputs * scale, tf.zeros_like(inputs))


def _uniform_16_bits(shape, seed):
    """Uniform ints in [0, 2^16) of `shape`: both halves of half as many 32-bit draws."""
    import tensorflow as tf

    size = tf.reduce_prod(shape)
    bits = tf.random.stateless_uniform([(size + 1) // 2], seed, minval=None, maxval=None,
                                       dtype="uint32", alg="threefry")
    low = tf.bitwise.bitwise_and(bits, tf.constant(0xFFFF, "uint32"))
    high = tf.bitwise.right_shift(bits, tf.constant(16, "uint32"))
    return tf.reshape(tf.concat([low, high], 0)[:size], shape)


def _in_xla_cluster():
    """True while tracing a TensorFlow function compiled with `jit_compile=True`."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())
