"""The text-level Keras model: one `.keras` file with the vocabulary, strings in and out."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import keras
import pytest
import tensorflow as tf

import keras_transformer as kt
from keras_transformer import cli
from keras_transformer.decoding_options import DecodingOptions
from keras_transformer.errors import UsageError
from keras_transformer.export.saved_model import saved_model_translator
from keras_transformer.training import load_config
from keras_transformer.translation import TextTranslator, translate_lines
from keras_transformer.translator import Translator, Vocabulary, load_translator

SENTENCES = ["A man in a blue shirt is standing on a ladder.", "Two dogs play in the snow.",
             "", "A woman reads a book."]

# A fresh process that has only the .keras file: no run directory, no vocabulary file.
FRESH_PROCESS = """
import json, sys
import keras_transformer
import keras
translator = keras.saving.load_model(sys.argv[1], safe_mode=True)
print(json.dumps({"options": translator.options.to_dict(),
                  "default": translator.translate(sys.argv[2:]),
                  "greedy": translator.generate(sys.argv[2:], beam_size=1)}))
"""


@pytest.fixture(scope="module")
def run_translator(tiny_run):
    return load_translator(os.path.join(tiny_run, "translator.keras"))


def test_train_writes_a_translator_with_the_run_options(tiny_run, run_translator):
    config = load_config(os.path.join(tiny_run, "config.yaml"))
    assert run_translator.options == config.evaluation.decoding_options()
    with zipfile.ZipFile(os.path.join(tiny_run, "translator.keras")) as archive:
        names = archive.namelist()
    assert any(name.endswith("tokenizer.model") for name in names), names
    assert not any("optimizer" in name for name in names), names  # weights only


def test_translations_equal_the_run_model_and_its_saved_model(tiny_run, run_translator):
    model = keras.models.load_model(os.path.join(tiny_run, "model.keras"))
    reference = TextTranslator(model, run_translator.vocabulary.tokenizer,
                               run_translator.options)
    beam = run_translator.options.beam_size
    expected = [t.decode() for t in reference.translate(SENTENCES, beam).numpy()]
    assert run_translator.translate(SENTENCES) == expected
    assert any(expected) and expected[2] == ""
    greedy = saved_model_translator(os.path.join(tiny_run, "saved_model"), 1)(SENTENCES)
    assert run_translator.translate(SENTENCES, beam_size=1) == [t.decode() for t in greedy]
    assert run_translator.translate(SENTENCES[0], beam_size=1) == greedy[0].decode()


def test_keras_file_alone_translates_in_a_fresh_process(tiny_run, run_translator, tmp_path):
    alone = tmp_path / "somewhere" / "translator.keras"
    alone.parent.mkdir()
    shutil.copy(os.path.join(tiny_run, "translator.keras"), alone)
    result = subprocess.run([sys.executable, "-I", "-c", FRESH_PROCESS, str(alone), *SENTENCES],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert out["options"] == run_translator.options.to_dict()
    assert out["default"] == run_translator.translate(SENTENCES)
    assert out["greedy"] == run_translator.translate(SENTENCES, beam_size=1)


def test_a_mixed_precision_run_is_scored_and_shipped_in_float32(tiny_run, tmp_path):
    """A run trained in mixed_bfloat16 keeps that policy in model.keras (with its
    optimizer); load_run (scoring, export) and the shipped translator.keras compute in
    float32 with the same weights."""
    from keras_transformer.training.evaluate import load_run

    run = str(tmp_path / "run")
    shutil.copytree(tiny_run, run)
    trained = keras.models.load_model(os.path.join(run, "model.keras"))
    mixed = trained.with_dtype("mixed_bfloat16")
    mixed.save(os.path.join(run, "model.keras"))
    _, loaded, tokenizer = load_run(run)
    shipped = Translator.from_trained(mixed, tokenizer)
    for model in (loaded, shipped.transformer):
        assert model.compute_dtype == "float32" and model is not mixed
        assert all((a == b).all() for a, b in zip(model.get_weights(), trained.get_weights()))
    assert trained.with_dtype("float32") is trained


def test_saved_options_and_a_new_vocabulary_round_trip(tmp_path):
    vocabulary = Vocabulary.train(["a dog runs in the park", "ein Hund rennt im Park"] * 40,
                                  vocab_size=30)
    config = kt.TransformerConfig.from_preset("tiny", vocab_size=vocabulary.vocab_size,
                                              d_model=16, d_ff=32, num_heads=2)
    options = DecodingOptions(beam_size=3, alpha=0.2, max_extra_length=5)
    translator = Translator(kt.Transformer(config), vocabulary, options)
    translator.save(tmp_path / "t.keras")
    loaded = keras.saving.load_model(tmp_path / "t.keras")
    assert isinstance(loaded, Translator) and loaded.options == options
    assert loaded.vocabulary.tokenizer.model_proto == vocabulary.tokenizer.model_proto
    for a, b in zip(loaded.get_weights(), translator.get_weights(), strict=True):
        assert (a == b).all()
    assert loaded.translate(["a dog runs"]) == translator.translate(["a dog runs"])
    # max_extra_length 5 bounds every output: at most 3 source pieces + 5 tokens.
    ids = loaded.vocabulary.tokenizer.tokenize(loaded.translate(["a dog runs"]))
    assert ids.row_lengths().numpy().max() <= len(vocabulary(tf.constant(["a dog runs"]))[0]) + 5


def test_bad_input_is_one_clear_error(tmp_path, tiny_run):
    with pytest.raises(ValueError, match="holds no SentencePiece model"):
        Vocabulary().vocab_size
    with pytest.raises(ValueError, match="beam_size must be an integer >= 1"):
        DecodingOptions(beam_size=2).replace(beam_size=0)
    model = keras.models.load_model(os.path.join(tiny_run, "model.keras"))
    model.save(tmp_path / "model.keras")
    with pytest.raises(UsageError, match="not a Translator"):
        load_translator(str(tmp_path / "model.keras"))


def test_command_line_takes_the_keras_file(tiny_run, run_translator, tmp_path, capsys):
    path = os.path.join(tiny_run, "translator.keras")
    assert cli.main(["translate", "--model", path, "--beam", "3", *SENTENCES[:2]]) == 0
    assert capsys.readouterr().out.splitlines() == run_translator.translate(SENTENCES[:2], 3)

    png = tmp_path / "cross.png"
    assert cli.main(["attention", "--model", path, "--out", str(png), SENTENCES[0]]) == 0
    assert png.stat().st_size > 10_000

    out = tmp_path / "exported"
    assert cli.main(["export", "--model", path, "--out", str(out)]) == 0
    exported = saved_model_translator(str(out))
    assert exported.beam_size == run_translator.options.beam_size
    assert [t.decode() for t in exported(SENTENCES)] == run_translator.translate(SENTENCES)


def test_translate_lines_pads_only_a_short_last_batch():
    """The last batch reuses the full batches' shape (one compile fewer); a single short
    call is not padded; outputs keep the input order."""
    sizes = []

    def translate(batch):
        sizes.append(len(batch))
        return [text.upper().encode() for text in batch]

    lines = [f"line {'x' * (i % 5)} {i}" for i in range(10)]
    assert translate_lines(translate, lines, 4, verbose=0) == [line.upper() for line in lines]
    assert sizes == [4, 4, 4]
    sizes.clear()
    assert translate_lines(translate, lines[:3], 4, verbose=0) == [x.upper() for x in lines[:3]]
    assert sizes == [3]


def test_translate_lines_takes_batches_from_both_ends():
    """Batches go longest, shortest, next longest, ...: two workers start on different
    shape buckets (compiling both at once)."""
    calls = []

    def translate(batch):
        calls.append([len(text) for text in batch])
        return [text.encode() for text in batch]

    lines = ["x" * n for n in (3, 9, 1, 7, 5, 10, 2, 8, 4, 6)]
    assert translate_lines(translate, lines, 2, verbose=0, workers=1) == lines
    assert calls == [[9, 10], [1, 2], [7, 8], [3, 4], [5, 6]]


def test_translate_lines_runs_batches_at_once_and_keeps_the_order():
    """With 2 workers two batches are in `translate` at the same time (the first waits
    until the second has started), and the first batch finishing last does not reorder
    the output."""
    import itertools
    import threading
    import time

    started = threading.Barrier(2, timeout=30)  # broken (an error) unless two calls overlap
    counter = itertools.count()

    def translate(batch):
        call = next(counter)
        if call < 2:
            started.wait()
        if call == 0:
            time.sleep(0.05)
        return [text[::-1].encode() for text in batch]

    lines = [f"{'y' * (i % 7)} sentence {i}" for i in range(9)]
    assert translate_lines(translate, lines, 2, verbose=0, workers=2) == \
        [line[::-1] for line in lines]
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        translate_lines(translate, lines, 2, verbose=0, workers=0)


def test_translate_lines_stops_queued_batches_after_an_error():
    """A failing batch raises at once; the batches still queued are not decoded."""
    import itertools
    import time

    counter = itertools.count()

    def translate(batch):
        if next(counter) == 0:
            raise RuntimeError("bad batch")
        time.sleep(0.02)
        return [text.encode() for text in batch]

    with pytest.raises(RuntimeError, match="bad batch"):
        translate_lines(translate, [f"s {i}" for i in range(100)], 2, verbose=0, workers=2)
    assert next(counter) < 20  # 50 batches without the cancel
