"""Hostile input never crashes the string signatures (SavedModel and .tflite): property
tests over random Unicode, control characters, NUL bytes, invalid UTF-8, huge lines and
odd batch sizes. Each answer is one string per input, within the truncation rules."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keras_transformer.decoding_options import DecodingOptions
from keras_transformer.export.litert import litert_translator, load_interpreter
from keras_transformer.export.saved_model import export_saved_model
from keras_transformer.tokenizer import SubwordTokenizer

OPTIONS = DecodingOptions(beam_size=2, max_extra_length=8, max_output_length=40)
MAX_SOURCE = 256  # subword tokens a source is cut to (ServingTranslator, EdgeTranslator)
# Every code point but surrogates: controls, NUL, combining marks, private use, emoji, RTL.
TEXT = st.text(st.characters(codec="utf-8"), max_size=300)
HOSTILE = ["", " ", "\t\n\r\x0b\x0c", "\x00" * 7, "a\x00b", "\u202e\u0301\ufeff",
           "😀" * 50, "x" * 100_000, "Ein Hund. " * 20_000]
PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def parts(tiny_run):
    model = keras.models.load_model(os.path.join(tiny_run, "model.keras"))
    return model, SubwordTokenizer.load(os.path.join(tiny_run, "tokenizer.model"))


@pytest.fixture(scope="module")
def saved_model(parts, tmp_path_factory):
    """The string SavedModel reloaded; graph-mode decoding (no XLA compile per shape
    bucket: hypothesis sends many shapes). The XLA export gets named cases in
    test_saved_model.py."""
    path = str(tmp_path_factory.mktemp("hostile") / "saved_model")
    export_saved_model(*parts, path, OPTIONS, jit_compile=False)
    return tf.saved_model.load(path).signatures


@pytest.fixture(scope="module")
def tflite(tiny_run):
    return litert_translator(os.path.join(tiny_run, "model.int8.tflite"), beam_size=1)


def _check(outputs, inputs, tokenizer):
    """One valid UTF-8 string per input; an input with no subword token (empty, spaces)
    gives an empty string."""
    assert len(outputs) == len(inputs)
    for text, out in zip(inputs, outputs, strict=True):
        out = bytes(out).decode("utf-8")
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")  # what the SavedModel does to bad bytes
        if len(tokenizer.tokenize([text])[0]) == 0:
            assert out == ""


@PROPERTY
@given(batch=st.lists(st.one_of(TEXT, st.binary(max_size=200)), max_size=4))
@example(batch=HOSTILE)
@example(batch=[])
@example(batch=["A dog runs."] * 257)
def test_saved_model_answers_every_input(saved_model, parts, batch):
    outputs = {name: saved_model[name](tf.constant(batch, tf.string))["translations"].numpy()
               for name in ("serving_default", "greedy")}
    for out in outputs.values():
        _check(out, batch, parts[1])


@PROPERTY
@given(sentence=TEXT)
@example(sentence="x" * 100_000)
@example(sentence="\x00")
@example(sentence="")
def test_tflite_answers_every_valid_utf8_input(tflite, parts, sentence):
    _check(tflite([sentence]), [sentence], parts[1])


def test_tflite_signatures_answer_an_empty_sentence(tiny_run):
    """`litert_translator` answers "" without calling the model; the signatures themselves
    must still take it (a zero-length source once made XNNPack fail to reshape)."""
    interpreter = load_interpreter(os.path.join(tiny_run, "model.int8.tflite"))
    for name in ("greedy", "translate"):
        out = interpreter.get_signature_runner(name)(sentence=np.array([""], dtype=object))
        assert bytes(out["translation"][0]) == b""
