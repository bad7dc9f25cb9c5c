"""Export: SavedModel and TFLite translators. Installed as `keras_transformer.export`.

- `export_saved_model`: strings in, strings out (tensorflow-text ops inside);
  `export_ids_saved_model`: ids in, ids out, core TensorFlow ops only (stock TF Serving);
  `saved_model_translator` loads either kind of string SavedModel for translation.
- `convert_tflite`: the decoding loop inside a .tflite file; `litert_translator` runs it.
"""

from keras_transformer.export.litert import litert_translator
from keras_transformer.export.saved_model import (export_ids_saved_model, export_saved_model,
                                                  saved_model_translator)
from keras_transformer.export.tflite import convert_tflite

__all__ = ["convert_tflite", "export_ids_saved_model", "export_saved_model",
           "litert_translator", "saved_model_translator"]
