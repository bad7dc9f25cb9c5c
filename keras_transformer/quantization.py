"""Int8 weights for the decoding step: int8 × int8 → int32 products.

`DecodingOptions(weights="int8")` runs the decoder's dense products and the output
projection of every decoding step on int8 operands: each weight matrix is quantized once
before the loop, symmetric per output column (its largest |w| maps to 127), and each row
of activations is quantized at every step the same way (dynamic quantization, as
CTranslate2's int8 and LiteRT's dynamic-range kernels do). Attention over the cache and
the encoder stay float32.

Why: XLA compiles an int8 × int8 → int32 dot to the CPU's integer units (VNNI, AMX).
On 2 AMX Xeon cores (ad hoc, each product alone in a 300-step XLA loop, ms), 128 rows:
128 × 8,000 (the main-job output projection) 1.94 float32 → 0.54 int8, 128 × 384
0.17 → 0.07, 256 × 128 0.10 → 0.04; 32 rows × 8,000: 0.63 → 0.18; at 4 rows level or
slower (the quantizing costs what the product saves). `bench/vs_ctranslate2.py` times it
in the decoder; a CPU without such units may gain nothing.
"""

import tensorflow as tf
from keras import ops

from keras_transformer.decoding_options import WEIGHTS


def quantize_kernel(kernel):
    """A 2-D float kernel `[d_in, d_out]` → `{"int8": [d_in, d_out], "scale": [d_out]}`.

    Example:
    >>> q = quantize_kernel(tf.constant([[0.5, -2.0], [-1.0, 1.0]]))
    >>> q["int8"].numpy()
    array([[  64, -127],
           [-127,   64]], dtype=int8)
    """
    kernel = tf.cast(kernel, tf.float32)
    scale = tf.reduce_max(tf.abs(kernel), axis=0) / 127.0
    scale = tf.where(scale > 0.0, scale, 1.0)  # an all-zero column stays zero
    return {"int8": tf.cast(tf.round(kernel / scale), tf.int8), "scale": scale}


def matmul(x, kernel):
    """`x [..., d_in] @ kernel`: a float kernel as is, a `quantize_kernel` one on int8
    operands (each row of `x` scaled by its own largest |x|). Returns `x`'s dtype.

    Example:
    >>> x, w = tf.constant([[1.0, 2.0]]), tf.constant([[0.5, -2.0], [-1.0, 1.0]])
    >>> matmul(x, quantize_kernel(w)).numpy().round(2)
    array([[-1.49,  0.  ]], dtype=float32)
    """
    if not isinstance(kernel, dict):
        return ops.matmul(x, ops.cast(kernel, x.dtype))
    shape = tf.shape(x)
    rows = tf.reshape(tf.cast(x, tf.float32), [-1, shape[-1]])               # [rows, d_in]
    row_scale = tf.reduce_max(tf.abs(rows), axis=1, keepdims=True) / 127.0    # [rows, 1]
    row_scale = tf.where(row_scale > 0.0, row_scale, 1.0)
    products = tf.linalg.matmul(tf.cast(tf.round(rows / row_scale), tf.int8), kernel["int8"],
                                output_type=tf.int32)                       # [rows, d_out]
    y = tf.cast(products, tf.float32) * row_scale * kernel["scale"]
    out_shape = tf.concat([shape[:-1], tf.shape(kernel["int8"])[-1:]], 0)
    return tf.cast(tf.reshape(y, out_shape), x.dtype)


def prepare(kernel, weights):
    """`kernel` for a decoder with `weights` ("float32" or "int8")."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    return quantize_kernel(kernel) if weights == "int8" else kernel
