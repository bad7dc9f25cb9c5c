"""Export a trained translator as a self-contained SavedModel.

Signatures (all batched; strings are UTF-8):

- `serving_default`: `sentences [batch] string` → `translations [batch] string`, beam
  search with the paper's defaults (beam 4, α 0.6, max length = source + 50).
- `greedy`: the same with greedy decoding.
- `translate_ids`: `source_ids [batch, len] int32` (pad 0) → `ids`, `scores` (beam).
- `attention`: `sources`, `targets` strings → subword ids and the attention weights of
  a teacher-forced pass (`encoder`, `cross`: `[layers, batch, heads, q, k]`).

The beam size, α and max_extra_length it was exported with are in `assets/decoding.json`
(`exported_decoding`): the beam is compiled into `serving_default`.

The tokenizer runs inside the graph (tensorflow-text ops), so serving needs only
`import tensorflow, tensorflow_text` — not this project. Decoding is XLA-compiled per
shape bucket (see `keras_transformer.translation`).
"""

import os

import tensorflow as tf

from keras_transformer.export.settings import choose_beam
from keras_transformer.tokenizer import BOS_ID, PAD_ID
from keras_transformer.translation import TextTranslator

STRINGS = tf.TensorSpec([None], tf.string, name="sentences")


class Translator(tf.Module):
    """A `tf.Module` wrapping model + tokenizer with serving signatures."""

    def __init__(self, model, tokenizer, beam_size=4, alpha=0.6, max_extra_length=50,
                 max_source_length=256, jit_compile=True):
        super().__init__(name="translator")
        self.model = model
        self.tokenizer = tokenizer
        self.beam_size = beam_size
        self.alpha = alpha
        self.text = TextTranslator(model, tokenizer, max_source_length, max_extra_length,
                                   jit_compile=jit_compile)
        self.vocabulary = tf.saved_model.Asset(_write_vocabulary(tokenizer))
        # The beam is compiled into `serving_default`; recorded so that a reader of the
        # SavedModel (e.g. `evaluate --model`) knows which beam it decodes with.
        self.decoding = tf.saved_model.Asset(_write_decoding(
            beam_size=beam_size, alpha=alpha, max_extra_length=max_extra_length))

    @tf.function(input_signature=[STRINGS])
    def beam(self, sentences):
        return {"translations": self.text.translate(sentences, self.beam_size, self.alpha)}

    @tf.function(input_signature=[STRINGS])
    def greedy(self, sentences):
        return {"translations": self.text.translate(sentences, 1)}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="source_ids")])
    def translate_ids(self, source_ids):
        ids, scores = self.text.decode_ids(source_ids, self.beam_size, self.alpha)
        return {"ids": ids, "scores": scores}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sources"),
                                  tf.TensorSpec([None], tf.string, name="targets")])
    def attention(self, sources, targets):
        source_ids = self.tokenizer.tokenize(sources).to_tensor(default_value=PAD_ID)
        target = self.tokenizer.tokenize(targets)
        batch = tf.shape(sources)[0]
        target_in = tf.concat([tf.fill([batch, 1], BOS_ID), target.to_tensor(PAD_ID)], 1)
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


def _write_vocabulary(tokenizer):
    """The SentencePiece model as a file, shipped in the SavedModel's assets."""
    import tempfile

    path = os.path.join(tempfile.mkdtemp(prefix="kt_vocab_"), "tokenizer.model")
    tokenizer.save(path)
    return path


def _write_decoding(**settings):
    """The decoding settings as `decoding.json`, shipped in the SavedModel's assets."""
    import json
    import tempfile

    path = os.path.join(tempfile.mkdtemp(prefix="kt_decoding_"), "decoding.json")
    with open(path, "w") as f:
        json.dump(settings, f)
    return path


def export_saved_model(model, tokenizer, out_dir, beam_size=4, alpha=0.6, max_extra_length=50):
    """Write the Translator SavedModel to `out_dir`; returns the Translator."""
    translator = Translator(model, tokenizer, beam_size, alpha, max_extra_length)
    tf.saved_model.save(translator, out_dir, signatures=translator.signatures())
    return translator


def exported_decoding(loaded):
    """The decoding settings (`beam_size`, `alpha`, ...) a loaded Translator SavedModel was
    exported with; {} for SavedModels exported before they were recorded."""
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


__all__ = ["Translator", "export_saved_model", "exported_decoding",
           "saved_model_translator"]
