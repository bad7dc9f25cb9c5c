"""Transformer layers, one concern a file (see the paper-to-code map in README.md)."""

from keras_transformer.layers.attention import MultiHeadAttention, scaled_dot_product_attention
from keras_transformer.layers.decoder import DecoderLayer, TransformerDecoder
from keras_transformer.layers.dropout import Dropout
from keras_transformer.layers.embedding import TokenEmbedding
from keras_transformer.layers.encoder import EncoderLayer, TransformerEncoder
from keras_transformer.layers.feed_forward import PositionwiseFeedForward
from keras_transformer.layers.positional_encoding import SinusoidalPositionalEncoding, sinusoids

__all__ = [
    "DecoderLayer", "Dropout", "EncoderLayer", "MultiHeadAttention", "PositionwiseFeedForward",
    "SinusoidalPositionalEncoding", "TokenEmbedding", "TransformerDecoder", "TransformerEncoder",
    "scaled_dot_product_attention", "sinusoids",
]
