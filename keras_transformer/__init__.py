"""keras-transformer: the Transformer of "Attention Is All You Need" in Keras 3."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from keras_transformer import layers, losses, masks, schedules  # noqa: E402
from keras_transformer.config import PRESETS, TransformerConfig  # noqa: E402
from keras_transformer.model import Transformer  # noqa: E402

__version__ = "0.1.0"
__all__ = ["PRESETS", "Transformer", "TransformerConfig", "layers", "losses", "masks", "schedules"]
