"""TFLite export run in the standalone LiteRT interpreter (ai-edge-litert), tiny trained model."""

import gzip
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_transformer import decoding
from keras_transformer.decoding_options import DecodingOptions
from keras_transformer.export import litert
from keras_transformer.export.settings import add_tflite_metadata
from keras_transformer.export.tflite import (EdgeStepper, EdgeTranslator, convert_functions,
                                             convert_tflite)
from keras_transformer.tokenizer import BOS_ID, EOS_ID, SubwordTokenizer
from keras_transformer.training.streaming import multi30k_paths
from keras_transformer.translation import TextTranslator

MAX_OUTPUT = 48
MAX_EXTRA = 16
OPTIONS = DecodingOptions(beam_size=2, alpha=0.6, max_extra_length=MAX_EXTRA,
                          max_output_length=MAX_OUTPUT)


def first_test_sentences(count=12):
    path = multi30k_paths("test_2016_flickr", "en", "de")[0]
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [next(f).strip() for _ in range(count)]


@pytest.fixture(scope="module")
def run_parts(tiny_run):
    model = keras.models.load_model(os.path.join(tiny_run, "model.keras"))
    tokenizer = SubwordTokenizer.load(os.path.join(tiny_run, "tokenizer.model"))
    return model, tokenizer


@pytest.fixture(scope="module")
def edge_fp32(run_parts, tmp_path_factory):
    model, tokenizer = run_parts
    out = str(tmp_path_factory.mktemp("edge") / "model.tflite")
    return convert_tflite(model, tokenizer, out, "none", OPTIONS)


def test_flatbuffers_hold_no_variables_and_only_builtin_or_tftext_ops(edge_fp32):
    for path in edge_fp32:
        names = litert.check_operators(path)
        assert not {"VAR_HANDLE", "READ_VARIABLE"} & names
        assert all(n.isupper() or n.startswith("TFText>") for n in names)
    translator_ops = litert.operator_names(edge_fp32[0])
    assert "WHILE" in translator_ops  # the decoding loop runs inside the model
    assert {"TFText>FastSentencepieceTokenize", "TFText>FastSentencepieceDetokenize"} <= (
        translator_ops)


def test_litert_strings_equal_tensorflow_decoding(run_parts, edge_fp32):
    model, tokenizer = run_parts
    # Same length caps on both sides: an undertrained model that never says eos stops at
    # source + MAX_EXTRA tokens in both, as long as that fits the edge model's static
    # MAX_OUTPUT (the SavedModel path has no such cap), so longer sources are left out.
    sentences = [s for s in first_test_sentences(16)
                 if len(tokenizer.tokenize([s])[0]) + MAX_EXTRA <= MAX_OUTPUT]
    assert len(sentences) >= 8
    reference = TextTranslator(model, tokenizer, OPTIONS, jit_compile=False)
    for beam in (1, 2):
        ours = litert.litert_translator(edge_fp32[0], beam)(sentences)
        expected = reference.translate(sentences, beam, 0.6).numpy()
        assert [t.decode() for t in ours] == [t.decode() for t in expected]
    assert any(ours)


def test_a_mixed_precision_model_converts_in_float32(run_parts, edge_fp32, tmp_path):
    """A model computing in mixed_bfloat16 (how the main job trains on CPUs with native
    bf16) converts: TFLite has no bf16 kernels, so its float32 weights are converted and
    translate as the float32 model's flatbuffer does."""
    model, tokenizer = run_parts
    mixed = model.with_dtype("mixed_bfloat16")
    assert mixed.compute_dtype == "bfloat16"
    out = convert_tflite(mixed, tokenizer, str(tmp_path / "mixed.tflite"), "none", OPTIONS)
    sentences = first_test_sentences(6)
    assert ([t.decode() for t in litert.litert_translator(out[0], 2)(sentences)]
            == [t.decode() for t in litert.litert_translator(edge_fp32[0], 2)(sentences)])


def test_litert_ids_equal_edge_module_in_tensorflow(run_parts, edge_fp32):
    model, tokenizer = run_parts
    ids = tokenizer.tokenize(first_test_sentences(6)).to_tensor().numpy()
    module = EdgeTranslator(model, tokenizer, OPTIONS)
    for beam, function in ((1, module.greedy_ids), (2, module.translate_ids)):
        got_ids, got_scores = litert.litert_ids(edge_fp32[0], ids, beam)
        want = function(tf.constant(ids))
        np.testing.assert_array_equal(got_ids, want["ids"].numpy())
        np.testing.assert_allclose(got_scores, want["scores"].numpy(), atol=1e-4)
        assert got_ids.shape == (len(ids), MAX_OUTPUT)


def test_signatures_converted_one_at_a_time_run_as_one_converter_call(run_parts, edge_fp32,
                                                                       tmp_path):
    """The export converts each signature in a converter call of its own and joins the
    flatbuffers (a call holds all its functions in memory). Joined, each signature runs
    as in one call's conversion of all four: the loops' subgraph indices were moved with
    them, and the weights the signatures share are stored once."""
    model, tokenizer = run_parts
    module = EdgeTranslator(model, tokenizer, OPTIONS)
    one_call = str(tmp_path / "one_call.tflite")
    with open(one_call, "wb") as f:
        f.write(add_tflite_metadata(convert_functions(module.concrete_functions()),
                                    OPTIONS.to_dict()))
    joined = edge_fp32[0]
    signatures = {"translate", "greedy", "translate_ids", "greedy_ids"}
    assert set(litert.load_interpreter(joined).get_signature_list()) == signatures
    assert set(litert.load_interpreter(one_call).get_signature_list()) == signatures
    assert os.path.getsize(joined) < 1.01 * os.path.getsize(one_call)
    sentences = first_test_sentences(6)
    ids = tokenizer.tokenize(sentences).to_tensor().numpy()
    for beam in (1, 2):
        assert (litert.litert_translator(joined, beam)(sentences)
                == litert.litert_translator(one_call, beam)(sentences))
        np.testing.assert_array_equal(litert.litert_ids(joined, ids, beam)[0],
                                      litert.litert_ids(one_call, ids, beam)[0])


def test_streaming_variant_steps_to_the_greedy_output(run_parts, edge_fp32):
    model, tokenizer = run_parts
    source = tokenizer.tokenize(first_test_sentences(1)).to_tensor().numpy()
    expected = litert.litert_ids(edge_fp32[0], source, beam_size=1)[0][0]
    interpreter = litert.load_interpreter(edge_fp32[1])
    encode = interpreter.get_signature_runner("encode")
    step = interpreter.get_signature_runner("decode_step")
    cache = encode(source_ids=source)
    shape = EdgeStepper(model, MAX_OUTPUT).cache_shape
    for i in range(model.config.num_decoder_layers):
        cache[f"self_key_{i}"] = np.zeros(shape, np.float32)
        cache[f"self_value_{i}"] = np.zeros(shape, np.float32)
    token, tokens = BOS_ID, []
    budget = int((source != 0).sum()) + MAX_EXTRA
    for index in range(MAX_OUTPUT):
        out = step(token=np.array([token], np.int32), index=np.array(index, np.int32), **cache)
        token = EOS_ID if index + 1 >= budget else int(np.argmax(out.pop("logits")[0]))
        out.pop("logits", None)
        cache.update(out)
        tokens.append(token)
        if token == EOS_ID:
            break
    np.testing.assert_array_equal(tokens, expected[: len(tokens)])
    assert tokens[-1] == EOS_ID or len(tokens) == MAX_OUTPUT


@pytest.mark.parametrize("quantize", ["float16", "int8"])
def test_quantized_models_are_smaller_and_translate(run_parts, edge_fp32, tmp_path, quantize):
    model, tokenizer = run_parts
    out = str(tmp_path / f"model.{quantize}.tflite")
    path, _ = convert_tflite(model, tokenizer, out, quantize, OPTIONS)
    litert.check_operators(path)
    assert os.path.getsize(path) < os.path.getsize(edge_fp32[0])
    fp32_bytes = litert.buffer_bytes_by_type(edge_fp32[0])
    quantized_bytes = litert.buffer_bytes_by_type(path)
    stored_as = {"float16": "FLOAT16", "int8": "INT8"}[quantize]
    assert quantized_bytes.get(stored_as, 0) > 0.2 * fp32_bytes["FLOAT32"]
    assert quantized_bytes.get("FLOAT32", 0) < 0.5 * fp32_bytes["FLOAT32"]
    sentences = first_test_sentences(4)
    fp32 = litert.litert_translator(edge_fp32[0], 1)(sentences)
    quantized = litert.litert_translator(path, 1)(sentences)
    assert len(quantized) == 4 and all(isinstance(t, bytes) for t in quantized)
    assert sum(a == b for a, b in zip(fp32, quantized)) >= 2  # weights close to fp32


def test_int8_conversion_leaves_the_beam_search_arithmetic_float32():
    """Dynamic-range (int8) conversion quantizes weights and, at run time, their inputs.
    The beam step's extension search has no weights and must come out of it exact: a
    log-normaliser summed as a product with a column of ones had that column quantized
    and the exps with it (scores off by up to 0.16)."""
    from ai_edge_litert.interpreter import Interpreter

    batch, k, vocab = 2, 4, 8000

    @tf.function(input_signature=[tf.TensorSpec([batch * k, vocab]), tf.TensorSpec([batch, k])])
    def search(logits, alive):
        return decoding._best_extensions(logits, alive, tf.constant(0), tf.fill([batch], 99), k)

    flatbuffer = convert_functions([search.get_concrete_function()], "int8")
    logits = tf.random.stateless_normal([batch * k, vocab], (7, 8)) * 3
    alive = tf.random.stateless_normal([batch, k], (9, 1)) - 3
    expected = [x.numpy() for x in search(logits, alive)]
    runner = Interpreter(model_content=flatbuffer).get_signature_runner()
    got = runner(logits=logits.numpy(), alive=alive.numpy())
    got = [got[name] for name in sorted(got)]  # output_0..2: scores, beam, token
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[2], expected[2])


def test_cli_exports_tflite_and_evaluates_it_in_litert(tiny_run, tmp_path):
    from keras_transformer import cli

    out = str(tmp_path / "cli.tflite")
    assert cli.main(["export", "--run", tiny_run, "--format", "tflite", "--out", out,
                     "--max-output-length", "32"]) == 0
    assert os.path.exists(out) and os.path.exists(str(tmp_path / "cli.step.tflite"))
    assert cli.main(["evaluate", "--run", tiny_run, "--model", out, "--beam", "1",
                     "--limit", "8"]) == 0
    with open(os.path.join(tiny_run, "bleu.test.cli.json")) as f:
        report = json.load(f)
    assert report["sentences"] == 8 and report["model"] == "cli"
    assert cli.main(["export", "--run", tiny_run, "--format", "tflite",
                     "--out", str(tmp_path / "no_suffix")]) == 2


def test_cli_translates_with_a_tflite_file(edge_fp32, capsys):
    from keras_transformer import cli

    sentences = first_test_sentences(3)
    expected = [t.decode() for t in litert.litert_translator(edge_fp32[0], 2)(sentences)]
    capsys.readouterr()
    assert cli.main(["translate", "--model", edge_fp32[0], "--beam", "2", *sentences]) == 0
    assert capsys.readouterr().out.splitlines() == expected


def test_a_model_litert_cannot_run_is_refused_before_any_file_is_written(
        tiny_run, tmp_path, capsys, monkeypatch):
    """The operator check runs on the converted flatbuffers, before anything is written:
    with WHILE (the decoding loop) declared unsupported, the export fails as one line,
    exit 2, and leaves no .tflite, no streaming variant and no partial file."""
    from keras_transformer import cli

    monkeypatch.setattr(litert, "FORBIDDEN_OPS", (*litert.FORBIDDEN_OPS, "WHILE"))
    out = tmp_path / "model.tflite"
    assert cli.main(["export", "--run", tiny_run, "--format", "tflite", "--out", str(out),
                     "--max-output-length", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unsupported operators" in err and "WHILE" in err, err
    assert os.listdir(tmp_path) == []
