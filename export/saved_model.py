"""Export a trained translator as a self-contained SavedModel.

Signatures (all batched; strings are UTF-8):

- `serving_default`: `sentences [batch] string` → `translations [batch] string`, beam
  search with the paper's defaults (beam 4, α 0.6, max length = source + 50).
- `greedy`: the same with greedy decoding.
- `translate_ids`: `source_ids [batch, len] int32` (pad 0) → `ids`, `scores` (beam).
- `attention`: `sources`, `targets` strings → subword ids and the attention weights of
  a teacher-forced pass (`encoder`, `cross`: `[layers, batch, heads, q, k]`).

The beam size, α, max_extra_length and stopping it was exported with are in `assets/decoding.json`
(`exported_decoding`): the beam is compiled into `serving_default`.

The tokenizer runs inside the graph (tensorflow-text ops), so serving needs only
`import tensorflow, tensorflow_text` — not this project. Decoding is XLA-compiled per
shape bucket (see `keras_transformer.translation`).

`export_ids_saved_model` writes the variant for the stock TF Serving binary, which does not
register tensorflow-text ops (tensorflow/serving#1490): ids in, ids out, core TensorFlow ops
only; the client tokenizes with `assets/tokenizer.model` (see `serving_client.py`).
"""

import json
import os
import shutil
import tempfile
import weakref

import tensorflow as tf

from keras_transformer.atomic import replaced_when_done
from keras_transformer.decoding_options import DecodingOptions
from keras_transformer.errors import UsageError
from keras_transformer.export.settings import choose_beam
from keras_transformer.translation import TextTranslator, _pad_to_buckets

STRINGS = tf.TensorSpec([None], tf.string, name="sentences")
SOURCE_IDS = tf.TensorSpec([None, None], tf.int32, name="source_ids")


class _Exported(tf.Module):
    """What both SavedModel modules hold: the model, its decoder (`self.text`, with the
    export's `DecodingOptions`) and the assets (vocabulary, decoding settings)."""

    def __init__(self, name, model, tokenizer, options, max_source_length, jit_compile,
                 in_graph_tokenizer):
        super().__init__(name=name)
        self.model = model
        self.options = options or DecodingOptions()
        self.text = TextTranslator(model, in_graph_tokenizer, self.options, max_source_length,
                                   jit_compile=jit_compile)
        # The beam is compiled into `serving_default`; recorded so that a reader of the
        # SavedModel (e.g. `evaluate --model`) knows which beam it decodes with.
        _attach_assets(self, tokenizer, self.options)


class ServingTranslator(_Exported):
    """A `tf.Module` wrapping model + tokenizer with serving signatures."""

    def __init__(self, model, tokenizer, options=None, max_source_length=256,
                 jit_compile=True):
        super().__init__("translator", model, tokenizer, options, max_source_length,
                         jit_compile, in_graph_tokenizer=tokenizer)
        self.tokenizer = tokenizer

    @tf.function(input_signature=[STRINGS])
    def beam(self, sentences):
        return {"translations": self.text.translate(sentences)}  # the export's beam and α

    @tf.function(input_signature=[STRINGS])
    def greedy(self, sentences):
        return {"translations": self.text.translate(sentences, 1)}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="source_ids")])
    def translate_ids(self, source_ids):
        ids, scores = self.text.decode_ids(source_ids)
        return {"ids": ids, "scores": scores}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sources"),
                                  tf.TensorSpec([None], tf.string, name="targets")])
    def attention(self, sources, targets):
        source_ids = self.tokenizer.source_ids(sources)
        target_in = self.tokenizer.target_in_ids(targets)
        weights = self.model.attention_scores(source_ids, target_in)
        return {
            "source_ids": source_ids,
            "target_ids": target_in,
            "encoder": tf.stack(weights["encoder"]),
            "cross": tf.stack(weights["cross"]),
        }

    def signatures(self):
        return {
            "serving_default": self.beam.get_concrete_function(),
            "greedy": self.greedy.get_concrete_function(),
            "translate_ids": self.translate_ids.get_concrete_function(),
            "attention": self.attention.get_concrete_function(),
        }


def _attach_assets(module, tokenizer, options):
    """Give `module` its SavedModel assets: `vocabulary` (the SentencePiece model) and
    `decoding` (the decoding settings as `decoding.json`).

    The files live in a temporary directory that is removed when `module` is
    garbage-collected or the process exits (`tf.saved_model.save` copies them into the
    SavedModel): each export used to leave two directories behind in the temp folder.
    """
    directory = tempfile.mkdtemp(prefix="kt_assets_")
    weakref.finalize(module, shutil.rmtree, directory, ignore_errors=True)
    vocabulary = os.path.join(directory, "tokenizer.model")
    tokenizer.save(vocabulary)
    decoding = os.path.join(directory, "decoding.json")
    with open(decoding, "w") as f:
        # The output length of a SavedModel follows the source (max_extra_length); the
        # static max_output_length of the edge model does not apply.
        json.dump({k: v for k, v in options.to_dict().items() if k != "max_output_length"}, f)
    module.vocabulary = tf.saved_model.Asset(vocabulary)
    module.decoding = tf.saved_model.Asset(decoding)


def export_saved_model(model, tokenizer, out_dir, options=None, jit_compile=True):
    """Write the ServingTranslator SavedModel (`DecodingOptions`: default beam 4, α 0.6)
    to `out_dir`; returns the ServingTranslator. `jit_compile=False` decodes in graph mode
    (no XLA compile per shape bucket: slower calls, no compile pauses)."""
    _check_out_dir(out_dir)
    translator = ServingTranslator(model, tokenizer, options, jit_compile=jit_compile)
    _save(translator, out_dir)
    return translator


class IdsTranslator(_Exported):
    """Source ids in, target ids out: the ServingTranslator's decoding without its
    tokenizer, so the SavedModel holds core TensorFlow ops only and stock TF Serving can run it.

    Signatures `serving_default` (beam search with the exported beam and α) and `greedy`
    take `source_ids [batch, length] int32` (SentencePiece ids of `assets/tokenizer.model`,
    no bos/eos, pad 0; any length: it is cut to `max_source_length` and padded to the
    decoder's shape bucket) and return `ids [batch, out_len] int32` (eos, then pad 0) and
    `scores [batch] float32`.

    Example:
    >>> module = IdsTranslator(model, tokenizer, DecodingOptions(beam_size=4))  # doctest: +SKIP
    >>> module.beam(tf.constant([[52, 9, 311, 5]]))["ids"]             # doctest: +SKIP
    <tf.Tensor: shape=(1, 66), dtype=int32, numpy=array([[41, 17, 8, 3, 0, ...]])>
    """

    def __init__(self, model, tokenizer, options=None, max_source_length=256,
                 jit_compile=True):
        # The same decoder as the ServingTranslator's, built without a tokenizer: a tokenizer
        # tracked on this module would save its tensorflow-text resources and ops too. Only
        # the SentencePiece file travels with the model, for the client to tokenize.
        super().__init__("ids_translator", model, tokenizer, options, max_source_length,
                         jit_compile, in_graph_tokenizer=None)

    @tf.function(input_signature=[SOURCE_IDS])
    def beam(self, source_ids):
        return self._decode(source_ids, self.options.beam_size)

    @tf.function(input_signature=[SOURCE_IDS])
    def greedy(self, source_ids):
        return self._decode(source_ids, 1)

    def _decode(self, source_ids, beam_size):
        # Cut and bucket as `TextTranslator.encode_text` does for text, so a client's
        # request of any length reuses one of a few compiled shapes and decodes exactly
        # as the string signatures would.
        source_ids = source_ids[:, : self.text.max_source_length]
        source_ids = _pad_to_buckets(source_ids, self.text.length_bucket)
        ids, scores = self.text.decode_ids(source_ids, beam_size)
        return {"ids": tf.cast(ids, tf.int32), "scores": tf.cast(scores, tf.float32)}

    def signatures(self):
        return {"serving_default": self.beam.get_concrete_function(),
                "greedy": self.greedy.get_concrete_function()}


def export_ids_saved_model(model, tokenizer, out_dir, options=None, jit_compile=True):
    """Write the ids-only SavedModel (core TensorFlow ops only) to `out_dir`; returns the
    IdsTranslator.

    With `jit_compile=True` (as the full export) decoding is XLA-compiled, which TF Serving
    runs only with `--xla_cpu_compilation_enabled=true`; `jit_compile=False` serves with
    no flag, at graph-mode speed.

    Example:
    >>> export_ids_saved_model(model, tokenizer, "translator_ids/1")   # doctest: +SKIP
    """
    _check_out_dir(out_dir)
    module = IdsTranslator(model, tokenizer, options, jit_compile=jit_compile)
    _save(module, out_dir)
    return module


def _check_out_dir(out_dir):
    """An existing SavedModel at `out_dir` is replaced; another non-empty directory is
    refused before any work (it could be a user's folder, which the replace would remove)."""
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.exists(
            os.path.join(out_dir, "saved_model.pb")):
        raise UsageError(f"{out_dir}: a directory that is not empty and holds no SavedModel; "
                         f"export into a new or empty directory")


def _save(module, out_dir):
    """`tf.saved_model.save`, into a `.partial-` directory renamed when complete: a failed
    or killed export never leaves a SavedModel directory that looks whole."""
    with replaced_when_done(os.path.normpath(out_dir)) as partial:
        tf.saved_model.save(module, partial, signatures=module.signatures())


def exported_decoding(loaded):
    """The decoding settings (`beam_size`, `alpha`, ...) a loaded ServingTranslator
    SavedModel was exported with; {} for SavedModels exported before they were recorded."""
    import json

    if not hasattr(loaded, "decoding"):
        return {}
    with tf.io.gfile.GFile(loaded.decoding.asset_path.numpy().decode(), "r") as f:
        return json.load(f)


def saved_model_translator(path, beam_size=None):
    """`translate(list_of_str) -> bytes array` with an exported SavedModel: its `greedy`
    signature for beam size 1, else `serving_default` (the beam it was exported with;
    another beam is a BeamError). `translate.beam_size` is the beam it decodes with
    (None: not recorded in the SavedModel)."""
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

    loaded = tf.saved_model.load(path)
    beam = choose_beam(beam_size, exported_decoding(loaded).get("beam_size"), path)
    signature = loaded.signatures["greedy" if beam == 1 else "serving_default"]

    def translate(batch):
        return signature(tf.constant(batch, tf.string))["translations"].numpy()

    translate.beam_size = beam
    return translate


__all__ = ["IdsTranslator", "ServingTranslator", "export_ids_saved_model", "export_saved_model",
           "exported_decoding", "saved_model_translator"]
