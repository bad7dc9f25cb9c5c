"""Token embeddings scaled by √d_model, shareable with the pre-softmax projection (§3.4)."""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_transformer")
class TokenEmbedding(keras.layers.Layer):
    """Embedding lookup multiplied by √d_model; `project` reuses it as output layer.

    One instance can serve as source embedding, target embedding and pre-softmax
    linear transformation at once, as in the paper. Its output carries a padding mask
    (True at ids ≠ `pad_id`) that downstream layers receive through Keras masking.

    Args:
        vocab_size: number of token ids.
        d_model: embedding size.
        pad_id: the padding id, masked out; 0 by default.
        scale: multiply the looked-up vectors by √d_model (§3.4).

    Example:
    >>> embed = TokenEmbedding(vocab_size=100, d_model=16)
    >>> ids = keras.ops.convert_to_tensor([[5, 7, 0]])
    >>> tuple(embed(ids).shape), tuple(embed.project(embed(ids)).shape)
    ((1, 3, 16), (1, 3, 100))
    """

    def __init__(self, vocab_size, d_model, pad_id=0, scale=True,
                 embeddings_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.pad_id = pad_id
        self.scale = scale
        # N(0, d^-1/2): after the √d scaling the inputs have unit variance, and the
        # tied output projection starts with logits of unit scale.
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer or keras.initializers.RandomNormal(stddev=d_model**-0.5)
        )

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            name="embeddings", shape=(self.vocab_size, self.d_model),
            initializer=self.embeddings_initializer,
        )

    def call(self, ids):
        ids = ops.cast(ids, "int32")
        vectors = ops.take(self.embeddings, ids, axis=0)
        if self.scale:
            vectors = vectors * ops.cast(math.sqrt(self.d_model), vectors.dtype)
        return vectors

    def project(self, x):
        """Logits `[..., vocab_size]` from hidden states with the embedding matrix."""
        return ops.matmul(x, ops.transpose(ops.cast(self.embeddings, x.dtype)))

    def compute_mask(self, ids, previous_mask=None):
        return ops.not_equal(ids, self.pad_id)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.d_model,)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size, d_model=self.d_model, pad_id=self.pad_id,
            scale=self.scale,
            embeddings_initializer=keras.initializers.serialize(self.embeddings_initializer),
        )
        return config
