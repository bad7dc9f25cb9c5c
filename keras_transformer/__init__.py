"""keras-transformer: the Transformer of "Attention Is All You Need" in Keras 3.

Importing the package imports TensorFlow quietly (keras_transformer/quiet.py) and registers
the Keras classes, so a saved model loads right after `import keras_transformer`:
`keras.saving.load_model("runs/multi30k_en_de/translator.keras").translate(["A dog."])`.

The public API: `Transformer` and `TransformerConfig` (the model), `layers`, `losses`,
`schedules`, `masks`; `decoding` (greedy and beam search) with `DecodingOptions`;
`SubwordTokenizer`; `Translator` + `Vocabulary` (the text-level Keras model) and
`TextTranslator` (strings → strings for any graph); exporters in `keras_transformer.export`,
training in `keras_transformer.training`.

Example:
>>> import keras_transformer as kt
>>> kt.TransformerConfig.from_preset("small").d_model
256
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from keras_transformer.quiet import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()

# Importing the model registers Transformer, its layers, loss and schedule with Keras.
from keras_transformer import decoding, layers, losses, masks, schedules  # noqa: E402
from keras_transformer.config import PRESETS, TransformerConfig  # noqa: E402
from keras_transformer.decoding_options import DecodingOptions  # noqa: E402
from keras_transformer.model import Transformer  # noqa: E402
from keras_transformer.tokenizer import SubwordTokenizer  # noqa: E402
from keras_transformer.translation import TextTranslator  # noqa: E402
from keras_transformer.translator import Translator, Vocabulary  # noqa: E402

__version__ = "0.1.0"

__all__ = ["PRESETS", "DecodingOptions", "SubwordTokenizer", "TextTranslator", "Transformer",
           "TransformerConfig", "Translator", "Vocabulary", "decoding", "layers", "losses",
           "masks", "schedules"]
