"""keras-transformer: the Transformer of "Attention Is All You Need" in Keras 3.

Importing the package imports TensorFlow quietly (keras_transformer/quiet.py) and registers
the model's Keras classes, so a saved model loads right after `import keras_transformer`:
`keras.saving.load_model("runs/multi30k_en_de/model.keras")`.

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
from keras_transformer import layers, losses, masks, schedules  # noqa: E402
from keras_transformer.config import PRESETS, TransformerConfig  # noqa: E402
from keras_transformer.model import Transformer  # noqa: E402

__version__ = "0.1.0"

__all__ = ["PRESETS", "Transformer", "TransformerConfig", "layers", "losses", "masks",
           "schedules"]
