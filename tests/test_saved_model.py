"""The exported SavedModel: signatures, reload without project code, awkward input."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_transformer.export.saved_model import export_saved_model
from keras_transformer.tokenizer import SubwordTokenizer

SENTENCES = ["A man in a blue shirt is standing on a ladder.", "Two dogs play in the snow.",
             "A woman reads a book."]

# Runs in `python -I` with this project's modules made unimportable.
FRESH_PROCESS = """
import sys
class NoProject:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "keras_transformer":
            raise ImportError("this process must not import " + name)
sys.meta_path.insert(0, NoProject())
import tensorflow as tf, tensorflow_text
model = tf.saved_model.load(sys.argv[1])
for name in ("serving_default", "greedy"):
    out = model.signatures[name](tf.constant(sys.argv[2:]))["translations"]
    print(name + "\\t" + "\\t".join(t.decode() for t in out.numpy()))
"""


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    model = keras.models.load_model(os.path.join(tiny_run, "model.keras"))
    tokenizer = SubwordTokenizer.load(os.path.join(tiny_run, "tokenizer.model"))
    path = str(tmp_path_factory.mktemp("export") / "saved_model")
    translator = export_saved_model(model, tokenizer, path)
    return path, translator


def test_fresh_process_without_project_gives_same_translations(exported):
    path, translator = exported
    expected = {
        "serving_default": [t.decode() for t in translator.beam(tf.constant(SENTENCES))[
            "translations"].numpy()],
        "greedy": [t.decode() for t in translator.greedy(tf.constant(SENTENCES))[
            "translations"].numpy()],
    }
    result = subprocess.run([sys.executable, "-I", "-c", FRESH_PROCESS, path, *SENTENCES],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = dict(line.split("\t", 1) for line in result.stdout.strip().splitlines())
    for name, translations in expected.items():
        assert lines[name].split("\t") == translations
    assert any(expected["serving_default"])


def test_saved_model_cli_lists_signatures(exported):
    path, _ = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    out = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True,
                         timeout=300).stdout
    for name in ("serving_default", "greedy", "translate_ids", "attention"):
        assert f"signature_def['{name}']" in out


def test_awkward_input_gives_defined_output(exported):
    _, translator = exported
    batch = tf.constant(["", "A dog.", b"broken \xff\xfe bytes", "x" * 10_000, "   "])
    out = translator.beam(batch)["translations"].numpy()
    assert out.shape == (5,)
    assert out[0] == b"" and out[4] == b""
    assert out[2].decode("utf-8")  # valid UTF-8 out, something translated
    assert translator.greedy(tf.constant([], tf.string))["translations"].shape == (0,)


def test_id_and_attention_signatures(exported):
    _, translator = exported
    ids = translator.text.encode_text(tf.constant(SENTENCES[:2]))
    out = translator.translate_ids(tf.cast(ids, tf.int32))
    assert out["ids"].shape[0] == 2 and out["scores"].shape == (2,)
    att = translator.attention(tf.constant(SENTENCES[:1]), tf.constant(["Ein Mann."]))
    cross = att["cross"].numpy()  # [layers, batch, heads, target, source]
    assert cross.shape[:2] == (2, 1) and cross.shape[-1] == att["source_ids"].shape[1]
    np.testing.assert_allclose(cross.sum(-1), 1.0, atol=1e-5)


def test_evaluate_scores_the_saved_model_like_the_keras_model(tiny_run, exported):
    from keras_transformer import cli
    from keras_transformer.training.evaluate import evaluate_run

    path, _ = exported
    keras_report = evaluate_run(tiny_run, beam_size=1, limit=16, verbose=0)
    assert cli.main(["evaluate", "--run", tiny_run, "--model", path, "--beam", "1",
                     "--limit", "16"]) == 0
    with open(os.path.join(tiny_run, "bleu.test.saved_model.json")) as f:
        saved_report = json.load(f)
    with open(os.path.join(tiny_run, "test.saved_model.hyp"), encoding="utf-8") as f:
        saved_hyps = f.read().splitlines()
    with open(os.path.join(tiny_run, "test.hyp"), encoding="utf-8") as f:
        keras_hyps = f.read().splitlines()
    assert len(saved_hyps) == 16 and saved_hyps == keras_hyps
    assert saved_report["bleu"] == keras_report["bleu"]
    assert saved_report["model"] == "saved_model"
    assert cli.main(["evaluate", "--run", tiny_run, "--model", path + "-missing"]) == 2


def test_attention_maps_plot_for_a_trained_model(tiny_run, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from keras_transformer.visualization import attention_map, plot_attention

    model = keras.models.load_model(os.path.join(tiny_run, "model.keras"))
    tokenizer = SubwordTokenizer.load(os.path.join(tiny_run, "tokenizer.model"))
    weights, queries, keys = attention_map(model, tokenizer, SENTENCES[1], "Zwei Hunde.")
    assert weights.shape == (model.config.num_heads, len(queries), len(keys))
    assert queries[0] == "<s>" and len(keys) == len(tokenizer.tokenize([SENTENCES[1]])[0])
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    figure = plot_attention(weights, queries, keys, title="cross")
    assert len(figure.axes[0].images) == 1
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == keys
    with pytest.raises(ValueError, match="kind"):
        attention_map(model, tokenizer, "a", "b", kind="sideways")


def test_cli_writes_an_attention_png(exported, tmp_path):
    from keras_transformer import cli

    path, _ = exported
    out = str(tmp_path / "attention.png")
    assert cli.main(["attention", "--model", path, "--out", out, "--kind", "encoder",
                     SENTENCES[0]]) == 0
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["attention", "--model", path + "-missing", "--out", out, "x"]) == 2


def test_cli_attention_console_is_quiet(exported, tmp_path):
    """In a fresh process (TensorFlow logs some C++ notes once a process): the attention
    signature's first call logs a oneDNN fallback note as an error; the command shows only
    its translation and the file it wrote."""
    path, _ = exported
    out = tmp_path / "cross.png"
    result = subprocess.run(
        [sys.executable, "-m", "keras_transformer.cli", "attention", "--model", path,
         "--out", str(out), SENTENCES[0]], capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == "", result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == f"wrote {out}"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_translates_arguments_and_files(exported, tmp_path, capsys):
    from keras_transformer import cli

    path, translator = exported
    expected = [t.decode() for t in translator.greedy(tf.constant(SENTENCES))[
        "translations"].numpy()]
    capsys.readouterr()
    assert cli.main(["translate", "--model", path, "--beam", "1", *SENTENCES]) == 0
    assert capsys.readouterr().out.splitlines() == expected
    source = tmp_path / "sentences.txt"
    source.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    assert cli.main(["translate", "--model", path, "--beam", "1", "--file", str(source)]) == 0
    assert capsys.readouterr().out.splitlines() == expected
    assert cli.main(["translate", "--model", path, "--workers", "0", "x"]) == 2
    assert capsys.readouterr().err.strip() == (
        "keras-transformer: error: --workers must be at least 1, got 0")


def test_cli_translate_imports_no_training_code_nor_sacrebleu(exported, tmp_path):
    """Serving a SavedModel from the command line needs the model, not the training stack
    (here with a file of one-sentence batches, two translated at once)."""
    path, translator = exported
    expected = [t.decode() for t in translator.greedy(tf.constant(SENTENCES))[
        "translations"].numpy()]
    source = tmp_path / "sentences.txt"
    source.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    script = (
        "import sys\n"
        "from keras_transformer import cli\n"
        f"assert cli.main(['translate', '--model', {path!r}, '--beam', '1', '--file', "
        f"{str(source)!r}, '--batch-size', '1', '--workers', '2']) == 0\n"
        "loaded = [m for m in sys.modules if m == 'sacrebleu' or m.startswith('sacrebleu.')\n"
        "          or m.startswith('keras_transformer.training')]\n"
        "assert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == expected


def test_export_leaves_no_temporary_files(tiny_run, tmp_path):
    """The vocabulary and decoding.json are written to a temporary folder for the
    SavedModel's assets; it goes away with the ServingTranslator (it used to stay in /tmp)."""
    import gc

    from keras_transformer.export.saved_model import ServingTranslator

    model = keras.models.load_model(os.path.join(tiny_run, "model.keras"))
    tokenizer = SubwordTokenizer.load(os.path.join(tiny_run, "tokenizer.model"))
    translator = ServingTranslator(model, tokenizer)
    folder = os.path.dirname(translator.vocabulary.asset_path.numpy().decode())
    assert sorted(os.listdir(folder)) == ["decoding.json", "tokenizer.model"]
    tf.saved_model.save(translator, str(tmp_path / "saved"),
                        signatures=translator.signatures())
    assert os.path.exists(tmp_path / "saved" / "assets" / "tokenizer.model")
    del translator
    gc.collect()
    assert not os.path.exists(folder)


def test_export_refuses_a_folder_that_is_not_a_saved_model(tiny_run, tmp_path, capsys):
    """Replacing a SavedModel is fine; replacing a user's folder of other files is not."""
    from keras_transformer import cli

    (tmp_path / "notes.txt").write_text("mine")
    assert cli.main(["export", "--run", tiny_run, "--format", "saved_model",
                     "--out", str(tmp_path)]) == 2
    assert "holds no SavedModel" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_cli_exports_an_int8_saved_model(tiny_run, tmp_path, capsys):
    """`export --quantize int8` (SavedModel): int8 decoding steps compiled in, recorded in
    its decoding.json, translating as `TextTranslator` does with `weights="int8"`;
    float16 is refused with a one-line error."""
    from keras_transformer import cli
    from keras_transformer.decoding_options import DecodingOptions
    from keras_transformer.export.saved_model import saved_model_translator
    from keras_transformer.translation import TextTranslator

    out = str(tmp_path / "int8")
    assert cli.main(["export", "--run", tiny_run, "--quantize", "int8", "--out", out]) == 0
    with open(os.path.join(out, "assets", "decoding.json")) as f:
        recorded = json.load(f)
    assert recorded["weights"] == "int8"
    model = keras.models.load_model(os.path.join(tiny_run, "model.keras"))
    tokenizer = SubwordTokenizer.load(os.path.join(tiny_run, "tokenizer.model"))
    options = DecodingOptions.from_dict(dict(recorded, max_output_length=128))
    expected = TextTranslator(model, tokenizer, options).translate(SENTENCES).numpy()
    assert list(saved_model_translator(out)(SENTENCES)) == list(expected)
    capsys.readouterr()
    assert cli.main(["export", "--run", tiny_run, "--quantize", "float16",
                     "--out", str(tmp_path / "f16")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "float16 is for --format tflite" in err
