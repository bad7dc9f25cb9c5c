"""The decoding settings an exported translator was made with, and the beams it can run.

The beam size is compiled into an exported model (SavedModel `serving_default`, TFLite
`translate`); next to it there is only greedy decoding. The settings are recorded in the
model (a SavedModel asset `decoding.json`, TFLite metadata `keras_transformer.decoding`) so
that a reader can check a requested beam instead of silently decoding with another one.
"""

import json

from keras_transformer.errors import UsageError

TFLITE_METADATA = "keras_transformer.decoding"


class BeamError(UsageError):
    """A beam size that an exported translator cannot decode with."""


def choose_beam(requested, exported, path):
    """The beam an exported translator decodes with when `requested` is asked for.

    None asks for the exported beam; 1 is the greedy signature; any other beam than the
    exported one is a BeamError (it would need another export). Returns None when the
    exported beam is asked for but the model does not record it (older exports).
    """
    if requested in (None, 1) or requested == exported:
        return requested or exported
    if exported is None:
        raise BeamError(f"{path} does not record its beam size (an older export): use "
                         f"beam 1 (greedy) or its default beam, or export it again")
    raise BeamError(f"{path} decodes with beam 1 (greedy) or the beam {exported} it was "
                     f"exported with, not {requested}: export it again with "
                     f"evaluation.beam_size: {requested}")


def add_tflite_metadata(flatbuffer, settings):
    """The .tflite `flatbuffer` (bytes) with `settings` as JSON metadata; interpreters
    ignore metadata they do not know."""
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(settings).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = TFLITE_METADATA, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def tflite_decoding(path):
    """The decoding settings recorded in a .tflite file ({} when there are none)."""
    from tensorflow.lite.python import schema_py_generated as schema

    with open(path, "rb") as f:
        model = schema.Model.GetRootAsModel(f.read(), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == TFLITE_METADATA.encode():
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return {}


__all__ = ["BeamError", "add_tflite_metadata", "choose_beam", "tflite_decoding"]
