"""Run and inspect exported .tflite translators with the standalone LiteRT interpreter.

`ai-edge-litert` is the runtime apps ship; tensorflow-text's registrar supplies the
tokenizer custom ops. This module needs neither this project's model code nor Keras.

Example:
>>> translate = litert_translator("model.tflite")            # doctest: +SKIP
>>> translate(["A dog runs."])                                # doctest: +SKIP
[b'Ein Hund rennt.']
"""

import threading

import numpy as np

from keras_transformer.errors import UsageError
from keras_transformer.export.settings import choose_beam, tflite_decoding

FORBIDDEN_OPS = ("VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "FlexDelegate")


def load_interpreter(path, num_threads=None):
    """A LiteRT interpreter for `path` with tensorflow-text's custom ops registered."""
    import tensorflow_text as tf_text
    from ai_edge_litert.interpreter import InterpreterWithCustomOps

    return InterpreterWithCustomOps(
        custom_op_registerers=tf_text.tflite_registrar.SELECT_TFTEXT_OPS,
        model_path=path, num_threads=num_threads)


def operator_names(model):
    """Names of every operator in a .tflite model (a path or the flatbuffer's bytes), all
    subgraphs (custom ops by their code)."""
    from tensorflow.lite.python import schema_py_generated as schema

    if isinstance(model, str):
        with open(model, "rb") as f:
            model = f.read()
    model = schema.Model.GetRootAsModel(model, 0)
    builtin = {code: name for name, code in vars(schema.BuiltinOperator).items()
               if not name.startswith("_")}
    names = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        if code.CustomCode():
            names.add(code.CustomCode().decode())
        else:
            names.add(builtin[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())])
    return names


def buffer_bytes_by_type(path):
    """Bytes of constant data (weights, vocabulary) per tensor type, e.g. `{"INT8": …}`."""
    from tensorflow.lite.python import schema_py_generated as schema

    with open(path, "rb") as f:
        model = schema.Model.GetRootAsModel(f.read(), 0)
    type_names = {code: name for name, code in vars(schema.TensorType).items()
                  if not name.startswith("_")}
    buffer_type = {}
    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            buffer_type.setdefault(tensor.Buffer(), type_names[tensor.Type()])
    totals = {}
    for index, name in buffer_type.items():
        size = model.Buffers(index).DataLength() if index < model.BuffersLength() else 0
        if size:
            totals[name] = totals.get(name, 0) + size
    return totals


class UnsupportedOpsError(UsageError):
    """A converted model holds operators no LiteRT runtime can run as shipped."""


def check_operators(model, name=None):
    """Raise UnsupportedOpsError if `model` (a .tflite path or flatbuffer bytes) holds
    variable ops (silent NaN) or Flex ops (no runtime has them); returns its op names.
    `name` names it in the message (default: the path)."""
    names = operator_names(model)
    bad = sorted(n for n in names if n in FORBIDDEN_OPS or n.startswith("Flex"))
    custom = sorted(n for n in names if n.isascii() and not n.isupper() and
                    not n.startswith("TFText>"))
    if bad or custom:
        where = name or (model if isinstance(model, str) else "the converted model")
        raise UnsupportedOpsError(f"{where}: unsupported operators {bad + custom}")
    return names


def litert_translator(path, beam_size=None, num_threads=None):
    """`translate(list_of_str) -> list of bytes` with the `translate` (exported beam) or
    `greedy` (beam 1) signature; another beam than these is a BeamError. Sentences run
    one at a time (the string signatures take one). `translate.beam_size` is the beam it
    decodes with (None: not recorded in the file).

    Safe to share between threads: a LiteRT interpreter holds its tensors in place and must
    not run two calls at once (shared by 8 threads, one failed RESHAPE checks and returned
    wrong answers), so each thread gets an interpreter of its own on its first call.
    """
    beam = choose_beam(beam_size, tflite_decoding(path).get("beam_size"), path)
    signature = "greedy" if beam == 1 else "translate"
    local = threading.local()

    def translate(sentences):
        if not hasattr(local, "runner"):
            local.runner = load_interpreter(path, num_threads).get_signature_runner(signature)
        # An empty sentence translates to an empty one without a model call (so the
        # empty sentences `translate_lines` pads a last batch with cost nothing here).
        return [local.runner(sentence=np.array([s], dtype=object))["translation"][0] if s
                else b"" for s in sentences]

    translate.beam_size = beam
    return translate


def litert_ids(path, source_ids, beam_size=4, num_threads=None):
    """Decode padded `source_ids [batch, len]` with the `translate_ids` / `greedy_ids`
    signature; returns `(ids, scores)` as numpy arrays."""
    runner = load_interpreter(path, num_threads).get_signature_runner(
        "greedy_ids" if beam_size == 1 else "translate_ids")
    out = runner(source_ids=np.asarray(source_ids, np.int32))
    return out["ids"], out["scores"]


__all__ = ["UnsupportedOpsError", "buffer_bytes_by_type", "check_operators", "litert_ids",
           "litert_translator", "load_interpreter", "operator_names"]
