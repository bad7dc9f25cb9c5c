"""Text in, text out, in one Keras object: vocabulary + Transformer + decoding options.

`Translator` is what a Keras user holds after training: `translate(["A dog runs."])`
returns strings, `save("translator.keras")` writes one file with the vocabulary inside
(a `.keras` asset), and `keras.saving.load_model(path)` (safe mode on) restores it in a
fresh process after `import keras_transformer`. Training writes `RUN/translator.keras`.

Example:
>>> import keras_transformer as kt
>>> vocabulary = Vocabulary.train(["a dog runs", "ein Hund rennt"] * 50, vocab_size=24)
>>> transformer = kt.Transformer(kt.TransformerConfig.from_preset(
...     "tiny", vocab_size=vocabulary.vocab_size, d_model=16, d_ff=32, num_heads=2))
>>> translator = Translator(transformer, vocabulary, DecodingOptions(beam_size=2))
>>> [type(text) for text in translator.translate(["a dog runs", ""], beam_size=1)]
[<class 'str'>, <class 'str'>]
>>> translator.translate([""])                # empty in, empty out
['']
"""

import os

import keras

from keras_transformer.decoding_options import DecodingOptions
from keras_transformer.model import Transformer
from keras_transformer.tokenizer import SubwordTokenizer
from keras_transformer.translation import TextTranslator, translate_lines

VOCABULARY_FILE = "tokenizer.model"


@keras.saving.register_keras_serializable(package="keras_transformer")
class Vocabulary(keras.layers.Layer):
    """The shared SentencePiece vocabulary as a Keras layer (no weights).

    Saved as an asset of the `.keras` file (`save_assets` / `load_assets`), not in the
    config. `vocabulary(sentences)` gives ragged int32 ids; `.tokenizer` is the
    `SubwordTokenizer` with `tokenize`, `detokenize` and `pieces`.
    """

    def __init__(self, tokenizer=None, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if isinstance(tokenizer, (bytes, bytearray)):
            tokenizer = SubwordTokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.built = True

    @classmethod
    def train(cls, sentences, vocab_size=8000, **kwargs):
        """Learn a unigram SentencePiece vocabulary from an iterable of strings."""
        return cls(SubwordTokenizer.train(sentences, vocab_size, **kwargs))

    @classmethod
    def load(cls, path):
        """From a SentencePiece model file (e.g. a run's `tokenizer.model`)."""
        return cls(SubwordTokenizer.load(path))

    def get_config(self):  # the SentencePiece model travels as an asset, not in the config
        return super().get_config()

    @property
    def vocab_size(self):
        return self._loaded().vocab_size

    def call(self, sentences):
        return self._loaded().tokenize(sentences)

    def save_assets(self, dir_path):
        self._loaded().save(os.path.join(dir_path, VOCABULARY_FILE))

    def load_assets(self, dir_path):
        self.tokenizer = SubwordTokenizer.load(os.path.join(dir_path, VOCABULARY_FILE))

    def _loaded(self):
        if self.tokenizer is None:
            raise ValueError("this Vocabulary holds no SentencePiece model: build it with "
                             "Vocabulary.train or Vocabulary.load, or load a saved Translator")
        return self.tokenizer


@keras.saving.register_keras_serializable(package="keras_transformer")
class Translator(keras.Model):
    """A trained `Transformer`, its `Vocabulary` and default `DecodingOptions`.

    Calling it gives teacher-forced logits like the Transformer; `translate` (alias
    `generate`) turns strings into strings with the XLA-compiled cached decoder, one
    compile per (beam, α) and shape bucket. Beam size and α can change per call; the
    defaults come from `options`.

    Args:
        transformer: a `keras_transformer.Transformer` (trained).
        vocabulary: its `Vocabulary` (or a `SubwordTokenizer`).
        options: `DecodingOptions` (or a dict of them); default beam 4, α 0.6.
    """

    def __init__(self, transformer, vocabulary, options=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(vocabulary, SubwordTokenizer):
            vocabulary = Vocabulary(vocabulary)
        if isinstance(options, dict):
            options = DecodingOptions.from_dict(options)
        self.transformer = transformer
        self.vocabulary = vocabulary
        self.options = options or DecodingOptions()
        self._text = None
        self.built = True

    @classmethod
    def from_trained(cls, model, vocabulary, options=None):
        """A Translator of a trained `Transformer`, holding a float32 copy of its
        architecture and weights only: no optimizer state, compile settings or training
        precision go into the `.keras` file."""
        transformer = model.with_dtype("float32")
        if transformer is model:
            transformer = Transformer.from_config(model.get_config())
            transformer.set_weights(model.get_weights())
        return cls(transformer, vocabulary, options)

    def call(self, inputs, training=None):
        return self.transformer(inputs, training=training)

    def translate(self, sentences, beam_size=None, alpha=None, batch_size=64):
        """Translate a list of strings (or one string) with this model's options, or the
        `beam_size` / `alpha` given; returns a list of strings (or one string)."""
        if isinstance(sentences, str):
            return self.translate([sentences], beam_size, alpha, batch_size)[0]
        options = self.options.replace(beam_size=beam_size, alpha=alpha)
        if self._text is None:
            self._text = TextTranslator(self.transformer, self.vocabulary.tokenizer,
                                        self.options)

        def translate_batch(batch):
            return self._text.translate(batch, options.beam_size, options.alpha).numpy()

        return translate_lines(translate_batch, list(sentences), batch_size, verbose=0)

    generate = translate

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "transformer": keras.saving.serialize_keras_object(self.transformer),
            "vocabulary": keras.saving.serialize_keras_object(self.vocabulary),
            "options": self.options.to_dict(),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("transformer", "vocabulary"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def load_translator(path):
    """The `Translator` saved in `path` (safe mode on); a UsageError for another model."""
    from keras_transformer.errors import UsageError

    translator = keras.saving.load_model(path)
    if not isinstance(translator, Translator):
        raise UsageError(f"{path} holds a {type(translator).__name__}, not a Translator "
                         f"(a run's translator.keras)")
    return translator


__all__ = ["Translator", "Vocabulary", "load_translator"]
