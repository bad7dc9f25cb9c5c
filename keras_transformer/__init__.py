"""keras-transformer: the Transformer of "Attention Is All You Need" in Keras 3.

The names below load on first use, so `keras-transformer --help` and the command line's
start-up do not import TensorFlow before they have decided how quiet it should be.

Example:
>>> import keras_transformer as kt
>>> kt.TransformerConfig.from_preset("small").d_model
256
"""

import importlib
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

_LAZY = {
    "PRESETS": "keras_transformer.config",
    "TransformerConfig": "keras_transformer.config",
    "Transformer": "keras_transformer.model",
    "layers": None,
    "losses": None,
    "masks": None,
    "schedules": None,
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'keras_transformer' has no attribute {name!r}")
    module = _LAZY[name]
    value = (importlib.import_module(f"keras_transformer.{name}") if module is None
             else getattr(importlib.import_module(module), name))
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
