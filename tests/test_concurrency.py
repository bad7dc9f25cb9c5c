"""Serving from many threads: the SavedModel, TextTranslator and the LiteRT runner give
exactly the serial answers, without crashes and without compiling a decoder twice."""

import gzip
import os
from concurrent.futures import ThreadPoolExecutor

import keras
import pytest

from keras_transformer.export.litert import litert_translator
from keras_transformer.export.saved_model import saved_model_translator
from keras_transformer.tokenizer import SubwordTokenizer
from keras_transformer.training.streaming import multi30k_paths
from keras_transformer.translation import TextTranslator

THREADS, REQUESTS = 8, 25


def requests():
    """THREADS x REQUESTS batches of 1-3 Multi30k test sentences of mixed lengths."""
    with gzip.open(multi30k_paths("test_2016_flickr", "en", "de")[0], "rt",
                   encoding="utf-8") as f:
        lines = [next(f).strip() for _ in range(60)]
    return [[lines[(7 * i + j) % len(lines)] for j in range(1 + i % 3)]
            for i in range(THREADS * REQUESTS)]


def serve_concurrently(translate, batches):
    """Each of THREADS threads sends REQUESTS batches; answers in request order."""
    def worker(start):
        return [(i, [bytes(t) for t in translate(batches[i])])
                for i in range(start, len(batches), THREADS)]

    with ThreadPoolExecutor(THREADS) as pool:
        answers = dict(pair for chunk in pool.map(worker, range(THREADS)) for pair in chunk)
    return [answers[i] for i in range(len(batches))]


@pytest.fixture(scope="module")
def batches():
    return requests()


def test_saved_model_signatures_from_many_threads(tiny_run, batches):
    translate = saved_model_translator(os.path.join(tiny_run, "saved_model"))
    serial = [[bytes(t) for t in translate(batch)] for batch in batches]
    assert serve_concurrently(translate, batches) == serial


def test_litert_runner_shared_by_many_threads(tiny_run, batches):
    translate = litert_translator(os.path.join(tiny_run, "model.int8.tflite"), beam_size=1)
    sample = batches[:THREADS * 4]  # LiteRT runs one sentence at a time: keep it short
    serial = [[bytes(t) for t in translate(batch)] for batch in sample]
    assert serve_concurrently(translate, sample) == serial


def test_text_translator_compiles_each_decoder_once(tiny_run, batches):
    model = keras.models.load_model(os.path.join(tiny_run, "model.keras"))
    tokenizer = SubwordTokenizer.load(os.path.join(tiny_run, "tokenizer.model"))
    translator = TextTranslator(model, tokenizer, jit_compile=False)

    def translate(batch):
        return translator.translate(batch, beam_size=2).numpy()

    # Four rounds of the eight threads: the first 32 requests hold 51 of the 60 sentences
    # in batches of 1-3, served concurrently; all 200 took 90 s of the suite.
    batches = batches[:THREADS * 4]
    concurrent = serve_concurrently(translate, batches)
    assert len(translator._compiled) == 1
    decoder = next(iter(translator._compiled.values()))
    # One trace per (batch, length) bucket at most: 1-3 sentences pad to batch 1, 2 or 4,
    # sources of < 48 subwords to length 16, 32 or 48.
    assert decoder.experimental_get_tracing_count() <= 9
    assert concurrent == [[bytes(t) for t in translate(batch)] for batch in batches]
