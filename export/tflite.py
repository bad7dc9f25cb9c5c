"""Convert a trained translator to TFLite: the whole decoding loop inside the flatbuffer.

Two files come out of `convert_tflite`:

- the translator (`FILE.tflite`), signatures
  - `translate`: `sentence` string `[1]` → `translation` string `[1]`, beam search
    (beam 4, α 0.6 by default); `greedy`: the same with greedy decoding;
  - `translate_ids` / `greedy_ids`: `source_ids` int32 `[batch, len]` (pad 0) → `ids`
    int32 `[batch, max_output_length]` (eos, then pad) and `scores`;
  and the decoding settings (beam size, α, lengths) as JSON metadata
  `keras_transformer.decoding` (see `keras_transformer.export.settings`);
- the streaming variant (`FILE.step.tflite`), for apps that show tokens as they come:
  `encode`: `source_ids [1, len]` → per-layer cross-attention keys/values and the source
  mask; `decode_step`: one token, its position and the explicit fixed-size cache →
  `logits [1, vocab]` and the updated cache. `init_cache` describes the cache shapes.

The decoding loops use TFLite builtin ops only; tokenization and detokenization are
tensorflow-text custom ops (FastSentencepiece, RaggedTensorToTensor), registered with
`tensorflow_text.tflite_registrar.SELECT_TFTEXT_OPS`. No Flex (select TF) ops.

Weights are frozen: every Keras variable is replaced by a constant while the functions are
traced (`keras.StatelessScope`), so the flatbuffer holds no VAR_HANDLE / READ_VARIABLE ops
— with those a .tflite can load and silently return NaN. The string signatures take one
sentence (tf-text's batched FastSentencepiece detokenize crashed in TFLite); batch through
the id signatures. Unlike the SavedModel, the edge model does not repair invalid UTF-8
(that needs `tf.strings` ops, which are Flex): pass valid UTF-8.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

from keras_transformer import decoding
from keras_transformer.atomic import replaced_when_done
from keras_transformer.decoding_options import DecodingOptions
from keras_transformer.export.litert import check_operators
from keras_transformer.export.settings import add_tflite_metadata
from keras_transformer.export.tflite_merge import merge_tflite
from keras_transformer.memory import release_memory
from keras_transformer.quiet import captured_stderr
from keras_transformer.tokenizer import text_mask

QUANTIZATIONS = ("none", "float16", "int8")


class FrozenWeights:
    """A snapshot of a model's weights; `scope()` makes traced code read them as constants."""

    def __init__(self, model):
        self.variables = list(model.weights)
        self.values = [np.asarray(v.numpy()) for v in self.variables]  # eager snapshot

    @contextlib.contextmanager
    def scope(self):
        mapping = [(v, tf.constant(value, dtype=v.dtype))
                   for v, value in zip(self.variables, self.values)]
        with keras.StatelessScope(state_mapping=mapping):
            yield


class EdgeTranslator(tf.Module):
    """The functions converted to TFLite (also callable in TensorFlow, for checking).

    Args:
        model: a trained `keras_transformer.Transformer`.
        tokenizer: its `SubwordTokenizer`.
        options: `DecodingOptions`; `max_output_length` is the static output (and cache)
            length, and each sentence also stops after source length + `max_extra_length`.
        max_source_length: sentences are cut to this many subword tokens.
    """

    def __init__(self, model, tokenizer, options=None, max_source_length=256):
        super().__init__(name="edge_translator")
        self._model = model  # the traced functions read its weights as constants
        self._weights = FrozenWeights(model)
        self._tokenizer = tokenizer
        self.options = options or DecodingOptions()
        self.beam_size = self.options.beam_size
        self.max_output_length = self.options.max_output_length
        self.max_source_length = max_source_length

    def _decode(self, source_ids, beam_size):
        with self._weights.scope():
            # No batch compaction (decoding_loop): the text signatures decode one
            # sentence, and the compacting loop is not measured under LiteRT.
            return decoding.decode(self._model, source_ids, self.max_output_length,
                                   self.options.replace(beam_size=beam_size), compact=False)

    def _source_ids(self, sentence):
        """One sentence → `[1, length]` ids, with dense ops only (ragged slicing and
        `to_tensor` would add ops that neither TFLite nor tf-text's registrar provide)."""
        ids = self._tokenizer.tokenize(sentence).flat_values[: self.max_source_length]
        # An empty sentence has no ids, and a zero-length source made LiteRT's XNNPack
        # delegate fail ("failed to reshape"): one pad id instead (its output is eos only).
        ids = tf.pad(ids, [[0, tf.maximum(1 - tf.size(ids), 0)]])
        return tf.expand_dims(ids, 0)

    def _text(self, sentence, beam_size):
        ids, _ = self._decode(self._source_ids(sentence), beam_size)
        ids = ids[0]
        pieces = tf.boolean_mask(ids, text_mask(ids))  # dense: no ragged ops in TFLite
        splits = tf.stack([0, tf.size(pieces)])  # int32: with int64 splits LiteRT returned ""
        ragged = tf.RaggedTensor.from_row_splits(pieces, splits, validate=False)
        return {"translation": self._tokenizer.fast.detokenize(ragged)}

    @tf.function(input_signature=[tf.TensorSpec([1], tf.string, name="sentence")])
    def translate(self, sentence):
        return self._text(sentence, self.beam_size)

    @tf.function(input_signature=[tf.TensorSpec([1], tf.string, name="sentence")])
    def greedy(self, sentence):
        return self._text(sentence, 1)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="source_ids")])
    def translate_ids(self, source_ids):
        ids, scores = self._decode(source_ids, self.beam_size)
        return {"ids": ids, "scores": scores}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="source_ids")])
    def greedy_ids(self, source_ids):
        ids, scores = self._decode(source_ids, 1)
        return {"ids": ids, "scores": scores}

    def concrete_functions(self):
        return [self.translate.get_concrete_function(), self.greedy.get_concrete_function(),
                self.translate_ids.get_concrete_function(),
                self.greedy_ids.get_concrete_function()]


class EdgeStepper(tf.Module):
    """Encoder + one decoder step with an explicit cache, as separate signatures.

    Cache tensors are named `self_key_{i}`, `self_value_{i}` (`[1, heads,
    max_output_length, head_dim]`, start as zeros) and `cross_key_{i}`, `cross_value_{i}`
    (from `encode`), for decoder layer i. Feed bos at index 0, then each chosen token.
    """

    def __init__(self, model, max_output_length=128):
        super().__init__(name="edge_stepper")
        self._model = model
        self._weights = FrozenWeights(model)
        self.max_output_length = max_output_length
        self.layers = model.config.num_decoder_layers
        heads = model.config.num_heads
        self.cache_shape = (1, heads, max_output_length, model.config.d_model // heads)
        shapes = {"token": ([1], tf.int32), "index": ([], tf.int32),
                  "source_mask": ([1, None], tf.bool)}
        for i in range(self.layers):
            for kind in ("self_key", "self_value"):
                shapes[f"{kind}_{i}"] = (self.cache_shape, tf.float32)
            for kind in ("cross_key", "cross_value"):
                shapes[f"{kind}_{i}"] = ([1, heads, None, self.cache_shape[-1]], tf.float32)
        specs = {name: tf.TensorSpec(shape, dtype, name=name)
                 for name, (shape, dtype) in shapes.items()}

        def decode_step(inputs):  # the TFLite signature key is this function's name
            return self._decode_step(inputs)

        self.decode_step = tf.function(decode_step, input_signature=[specs])

    @tf.function(input_signature=[tf.TensorSpec([1, None], tf.int32, name="source_ids")])
    def encode(self, source_ids):
        with self._weights.scope():
            memory, source_mask = self._model.encode(source_ids, training=False)
            cache = self._model.init_cache(memory, 1)
        out = {"source_mask": source_mask}
        for i, layer in enumerate(cache):
            out[f"cross_key_{i}"], out[f"cross_value_{i}"] = layer["cross_key"], layer["cross_value"]
        return out

    def _decode_step(self, inputs):
        cache = [{"key": inputs[f"self_key_{i}"], "value": inputs[f"self_value_{i}"],
                  "cross_key": inputs[f"cross_key_{i}"], "cross_value": inputs[f"cross_value_{i}"]}
                 for i in range(self.layers)]
        with self._weights.scope():
            logits, cache = self._model.decode_step(inputs["token"], inputs["index"], cache,
                                                    inputs["source_mask"])
        out = {"logits": logits}
        for i, layer in enumerate(cache):
            out[f"self_key_{i}"], out[f"self_value_{i}"] = layer["key"], layer["value"]
        return out

    def concrete_functions(self):
        return [self.encode.get_concrete_function(), self.decode_step.get_concrete_function()]


def to_tflite(module, quantize="none"):
    """Convert a module's functions (builtins + tf-text custom ops) to flatbuffer bytes, one
    signature per function, keyed by the function's name.

    One converter call per function, the flatbuffers then joined (`export/tflite_merge.py`):
    a call holds all its functions at once, and the main-job translator's four signatures
    in one call peaked at 2.6 GB against 1.8 GB one at a time, with the same outputs and a
    flatbuffer 8 KB smaller (`bench/memory_phases.py`).
    """
    parts = {}
    for function in module.concrete_functions():
        parts[function.graph.name] = convert_functions([function], quantize)
        release_memory()  # else what a call frees stays resident (0.3-0.4 GB a call)
    return merge_tflite(parts)


def convert_functions(functions, quantize="none"):
    """One converter call on concrete `functions`: flatbuffer bytes (one signature: key
    serving_default; several: each function's name)."""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
    # The converter saves its `trackable_obj` as a SavedModel and loads it back. Given the
    # module, that meant the whole Keras model and all its functions; the traced
    # functions read frozen constants (FrozenWeights), so an empty holder suffices: the
    # main-job translator (4 signatures) converts in 19 s at 2.6 GB peak instead of 64 s
    # at 3.9 GB, to the same flatbuffer size (AVX2 EPYC, 2 cores).
    for function in functions:  # the empty holder could not save a captured resource
        if any(t.dtype in (tf.resource, tf.variant) for t in function.captured_inputs):
            raise ValueError(f"{function.name} captures a resource (a variable or a "
                             "table): trace it inside FrozenWeights.scope()")
    converter = tf.lite.TFLiteConverter.from_concrete_functions(functions, tf.Module())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = True  # tensorflow-text tokenizer ops only (checked)
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # int8: dynamic-range weights
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        # One scale per dense weight instead of one per output channel. Per channel, the
        # shared embedding was stored twice (lookup and output projection are quantized
        # differently) and each of the 12 subgraphs repeated the 8,000 vocabulary scales:
        # 12.2 MiB (40 % of fp32) vs 8.8 MiB (29 %) for the small model, same BLEU.
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    with captured_stderr():  # graph-import notes logged as errors; a failure still shows them
        return converter.convert()


def convert_tflite(model, tokenizer, out_path, quantize="none", options=None):
    """Write `out_path` (translator) and `out_path` with `.step.tflite` (streaming variant),
    decoding with `options` (`DecodingOptions`, recorded as metadata).

    Both are converted and their operators checked (`litert.check_operators`) before
    either file is written; a model LiteRT could not run is an UnsupportedOpsError and
    leaves no file. Returns the two paths.
    """
    # The converter quantizes a .tflite (`quantize`); its graph is converted from float32.
    options = (options or DecodingOptions()).replace(weights="float32")
    model = model.with_dtype("float32")  # TFLite has no bf16 kernels (mixed-precision runs)
    translator = EdgeTranslator(model, tokenizer, options)
    stepper = EdgeStepper(model, options.max_output_length)
    step_path = out_path[: -len(".tflite")] + ".step.tflite" if out_path.endswith(
        ".tflite") else out_path + ".step.tflite"
    flatbuffers = {}
    for module, path in ((translator, out_path), (stepper, step_path)):
        # A conversion frees memory that stays resident (main-job translator: 1,940 MB
        # after it, 1,512 MB released; bench/memory_phases.py): else the next starts there.
        release_memory()
        flatbuffer = to_tflite(module, quantize)
        check_operators(flatbuffer, name=path)
        if module is translator:  # its `translate` signature has the beam compiled in
            flatbuffer = add_tflite_metadata(flatbuffer, options.to_dict())
        flatbuffers[path] = flatbuffer
    for path, flatbuffer in flatbuffers.items():
        with replaced_when_done(path) as partial, open(partial, "wb") as f:
            f.write(flatbuffer)
    return out_path, step_path


__all__ = ["EdgeStepper", "EdgeTranslator", "convert_functions", "convert_tflite",
           "FrozenWeights", "to_tflite"]
