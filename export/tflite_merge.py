"""Several .tflite flatbuffers as one model holding all their signatures.

LiteRT's converter holds every function of a call in memory at once: the main-job
translator's four signatures in one call peaked at 2.6 GB, one at a time at 1.8 GB
(`bench/memory_phases.py`). `export/tflite.py` converts them one call each and joins the
flatbuffers here. Joining is bookkeeping on the flatbuffer schema (the object API of
`tensorflow.lite.tools.flatbuffer_utils`): the subgraphs of each part are appended with
their tensors' buffer indices, their operators' opcode indices and the subgraph indices
inside control-flow options (WHILE's body and condition, IF's branches, ...) moved;
constant buffers with the same bytes are stored once, so the weights the signatures share
(each part freezes the same variables) are not repeated.

Example:
    >>> import numpy as np
    >>> import tensorflow as tf
    >>> from ai_edge_litert.interpreter import Interpreter
    >>> from keras_transformer.export.tflite import convert_functions
    >>> x = tf.TensorSpec([2], tf.float32, name="x")
    >>> double = tf.function(lambda x: {"y": 2 * x}, input_signature=[x])
    >>> square = tf.function(lambda x: {"y": x * x}, input_signature=[x])
    >>> parts = {"double": convert_functions([double.get_concrete_function()]),
    ...          "square": convert_functions([square.get_concrete_function()])}
    >>> model = Interpreter(model_content=merge_tflite(parts))
    >>> sorted(model.get_signature_list())
    ['double', 'square']
    >>> model.get_signature_runner("square")(x=np.array([3.0, 4.0], np.float32))["y"]
    array([ 9., 16.], dtype=float32)
"""

__all__ = ["merge_tflite"]


def merge_tflite(parts):
    """One flatbuffer (bytes) holding the signatures of `parts`, {key: flatbuffer of one
    signature}; each part's signature (the converter calls it serving_default) takes its key.

    The metadata is the first part's, with `min_runtime_version` raised to the highest
    any part needs.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    models = []
    for key, part in parts.items():
        model = flatbuffer_utils.convert_bytearray_to_object(bytearray(part))
        if len(model.signatureDefs) != 1:
            raise ValueError(f"part {key!r} has {len(model.signatureDefs)} signatures, not 1")
        model.signatureDefs[0].signatureKey = key.encode()
        models.append(model)
    merged = models[0]
    buffers = {_content(b): i for i, b in enumerate(merged.buffers) if _content(b)}
    opcodes = {_opcode_key(code): i for i, code in enumerate(merged.operatorCodes)}
    names = {subgraph.name for subgraph in merged.subgraphs}
    for model in models[1:]:
        buffer_map = [_add_buffer(merged, buffers, b) for b in model.buffers]
        opcode_map = [_add_opcode(merged, opcodes, code) for code in model.operatorCodes]
        first = len(merged.subgraphs)
        for signature in model.signatureDefs:
            signature.subgraphIndex += first
            merged.signatureDefs.append(signature)
        for subgraph in model.subgraphs:
            for tensor in subgraph.tensors:
                tensor.buffer = buffer_map[tensor.buffer]
            for op in subgraph.operators:
                op.opcodeIndex = opcode_map[op.opcodeIndex]
                for options in (op.builtinOptions, getattr(op, "builtinOptions2", None)):
                    _shift_subgraph_indices(options, first)
            if subgraph.name in names:  # each part names its loops while_cond, while_body, ...
                subgraph.name = subgraph.name + b"_%d" % len(merged.subgraphs)
            names.add(subgraph.name)
            merged.subgraphs.append(subgraph)
    _raise_min_runtime_version(merged, models)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(merged))


def _content(buffer):
    """The bytes of a constant buffer; None for an empty one (a non-constant tensor's)."""
    if buffer.data is None or len(buffer.data) == 0:
        return None
    return bytes(buffer.data)


def _add_buffer(merged, buffers, buffer):
    content = _content(buffer)
    if content is not None and content in buffers:
        return buffers[content]
    merged.buffers.append(buffer)
    index = len(merged.buffers) - 1
    if content is not None:
        buffers[content] = index
    return index


def _opcode_key(code):
    return (code.builtinCode, code.deprecatedBuiltinCode, code.customCode, code.version)


def _add_opcode(merged, opcodes, code):
    key = _opcode_key(code)
    if key not in opcodes:
        merged.operatorCodes.append(code)
        opcodes[key] = len(merged.operatorCodes) - 1
    return opcodes[key]


def _shift_subgraph_indices(options, offset):
    """Add `offset` to every subgraph index an operator's options hold (WHILE, IF, CALL_ONCE,
    StableHLO while/composite: the schema names them `...SubgraphIndex` / `...SubgraphIndices`)."""
    if options is None:
        return
    for name, value in vars(options).items():
        lowered = name.lower()
        if lowered.endswith("subgraphindex"):
            setattr(options, name, value + offset)
        elif lowered.endswith("subgraphindices") and value is not None:
            setattr(options, name, [index + offset for index in value])


def _raise_min_runtime_version(merged, models):
    """Point the merged model's `min_runtime_version` at a new buffer holding the highest
    version any part needs (a new buffer: a constant may share the old one's bytes)."""
    def version(model):
        for entry in model.metadata or []:
            if entry.name == b"min_runtime_version":
                text = bytes(model.buffers[entry.buffer].data).split(b"\0")[0].decode()
                return tuple(int(p) for p in text.split(".")), entry
        return None, None

    found = [version(model) for model in models]
    _, entry = found[0]
    if entry is None:
        return
    highest = max(v for v, _ in found if v)
    buffer = type(merged.buffers[entry.buffer])()
    text = ".".join(str(p) for p in highest).encode()
    buffer.data = bytearray(text + b"\0" * max(0, 16 - len(text)))
    merged.buffers.append(buffer)
    entry.buffer = len(merged.buffers) - 1
