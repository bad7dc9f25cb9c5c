"""The ids-only SavedModel for stock TF Serving (issue 14): core TensorFlow ops only, the
same ids as the full export, and the REST client's request and response handling."""

import gzip
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import keras
import pytest
import tensorflow as tf

from keras_transformer import cli
from keras_transformer import tokenizer as project_tokenizer
from keras_transformer.decoding_options import DecodingOptions
from keras_transformer.export import serving_client
from keras_transformer.export.saved_model import export_saved_model, exported_decoding
from keras_transformer.tokenizer import SubwordTokenizer
from keras_transformer.training.streaming import multi30k_paths
from keras_transformer.translation import TextTranslator

# Runs in `python -I` where neither tensorflow_text nor this project can be imported, as
# in stock TF Serving. argv: request.json (models, source ids), report.json (written here).
FRESH_PROCESS = r"""
import json, os, sys
sys.modules["tensorflow_text"] = None  # any `import tensorflow_text` now raises ImportError

class NoProject:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "keras_transformer":
            raise ImportError("this process must not import " + name)

sys.meta_path.insert(0, NoProject())
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

def op_types(path):
    # Every op of the SavedModel: its graph and all functions of its library (loading
    # alone would not show an op of a function that is never called).
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    graph = proto.meta_graphs[0].graph_def
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops.update(node.op for node in function.node_def)
    return ops

with open(sys.argv[1]) as f:
    request = json.load(f)
report = {"ops": {}, "unregistered": {}}
for name, path in request["models"].items():
    ops = op_types(path)
    report["ops"][name] = sorted(ops)
    report["unregistered"][name] = sorted(op for op in ops if op_def_registry.get(op) is None)
model = tf.saved_model.load(request["models"]["ids"])
source_ids = tf.constant(request["source_ids"], tf.int32)
for signature in ("serving_default", "greedy"):
    out = model.signatures[signature](source_ids=source_ids)
    report[signature] = {key: out[key].numpy().tolist() for key in ("ids", "scores")}
    report[signature]["dtypes"] = [out["ids"].dtype.name, out["scores"].dtype.name]
report["tensorflow_text_modules"] = sorted(
    m for m, v in sys.modules.items() if m.split(".")[0] == "tensorflow_text" and v is not None)
with open("/proc/self/maps") as f:  # a tf-text op library loaded by any other route
    report["tensorflow_text_libraries"] = sorted(
        {line.split()[-1] for line in f if "tensorflow_text" in line})
with open(sys.argv[2], "w") as f:
    json.dump(report, f)
"""


def multi30k_sentences(count=6):
    """The first Multi30k test sentences and an empty one (decodes to just eos)."""
    with gzip.open(multi30k_paths("test_2016_flickr", "en", "de")[0], "rt",
                   encoding="utf-8") as f:
        return [next(f).strip() for _ in range(count)] + [""]


@pytest.fixture(scope="module")
def exports(tiny_run, tmp_path_factory):
    """Both SavedModels of the tiny run, with the same decoding settings: the ids-only one
    written by the CLI into a TF Serving version directory, the full one by the API."""
    root = tmp_path_factory.mktemp("serving")
    ids_dir = str(root / "translator_ids" / "1")
    assert cli.main(["export", "--run", tiny_run, "--format", "saved_model", "--ids-only",
                     "--out", ids_dir]) == 0
    ids_model = tf.saved_model.load(ids_dir)
    settings = exported_decoding(ids_model)
    model = keras.models.load_model(os.path.join(tiny_run, "model.keras"))
    tokenizer = SubwordTokenizer.load(os.path.join(tiny_run, "tokenizer.model"))
    full_dir = str(root / "saved_model")
    export_saved_model(model, tokenizer, full_dir, DecodingOptions.from_dict(settings))
    sentences = multi30k_sentences()
    full = tf.saved_model.load(full_dir)
    # The ids the full SavedModel decodes for these sentences: its own tokenization,
    # bucketed as its string signatures do it.
    bucketed = TextTranslator(model, tokenizer).encode_text(tf.constant(sentences))
    beam = full.signatures["translate_ids"](source_ids=tf.cast(bucketed, tf.int32))
    strings = {name: [t.decode() for t in full.signatures[name](
        sentences=tf.constant(sentences))["translations"].numpy()]
        for name in ("serving_default", "greedy")}
    return SimpleNamespace(
        ids_dir=ids_dir, full_dir=full_dir, ids_model=ids_model, settings=settings,
        tokenizer=tokenizer, sentences=sentences, strings=strings,
        # What a client sends: padded to the longest sentence only, not to a bucket.
        source_ids=tokenizer.tokenize(tf.constant(sentences)).to_tensor().numpy(),
        beam_ids=beam["ids"].numpy(), beam_scores=beam["scores"].numpy())


def test_cli_writes_ids_saved_model_with_tokenizer_and_settings(tiny_run, exports):
    with open(os.path.join(exports.ids_dir, "assets", "tokenizer.model"), "rb") as f:
        asset = f.read()
    with open(os.path.join(tiny_run, "tokenizer.model"), "rb") as f:
        assert asset == f.read()
    assert exports.settings == {"beam_size": 2, "alpha": 0.6, "max_extra_length": 50,
                                "stopping": "exact", "weights": "float32"}
    for name in ("serving_default", "greedy"):
        signature = exports.ids_model.signatures[name]
        (spec,) = signature.structured_input_signature[1].values()
        assert (spec.name, spec.dtype, spec.shape.as_list()) == (
            "source_ids", tf.int32, [None, None])
        outputs = signature.structured_outputs
        assert (outputs["ids"].dtype, outputs["scores"].dtype) == (tf.int32, tf.float32)
        assert outputs["ids"].shape.rank == 2 and outputs["scores"].shape.rank == 1
    assert set(exports.ids_model.signatures) == {"serving_default", "greedy"}
    # --ids-only is a SavedModel variant; refused (one-line error) before loading the run.
    assert cli.main(["export", "--run", tiny_run, "--format", "tflite", "--ids-only"]) == 2


def test_fresh_process_without_tensorflow_text_decodes_like_the_full_export(exports, tmp_path):
    request, report_path = tmp_path / "request.json", tmp_path / "report.json"
    request.write_text(json.dumps({
        "models": {"ids": exports.ids_dir, "full": exports.full_dir},
        "source_ids": exports.source_ids.tolist()}))
    result = subprocess.run([sys.executable, "-I", "-c", FRESH_PROCESS, str(request),
                             str(report_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())

    # Every op of the ids-only SavedModel is a core TensorFlow op; the same scan of the
    # full export finds exactly its tf-text tokenizer ops, so the scan does see them.
    assert report["unregistered"]["ids"] == []
    assert {"While", "StatelessWhile"} & set(report["ops"]["ids"])  # the decoding loop
    assert "TopKV2" in report["ops"]["ids"]  # beam search
    assert report["unregistered"]["full"] and all(
        op.startswith("TFText>") for op in report["unregistered"]["full"])
    assert report["tensorflow_text_modules"] == [] and report["tensorflow_text_libraries"] == []

    beam, greedy = report["serving_default"], report["greedy"]
    assert beam["dtypes"] == greedy["dtypes"] == ["int32", "float32"]
    # Bucketed inside the signature: the same ids and scores as the full model's
    # translate_ids on the bucketed input.
    assert beam["ids"] == exports.beam_ids.tolist()
    assert beam["scores"] == pytest.approx(exports.beam_scores.tolist(), abs=1e-6)
    for name, out in (("serving_default", beam), ("greedy", greedy)):
        texts = [t.decode() for t in exports.tokenizer.detokenize(out["ids"]).numpy()]
        assert texts == exports.strings[name]
    assert exports.strings["greedy"][-1] == "" and any(exports.strings["greedy"])
    assert all(score <= 0 for score in greedy["scores"])


def test_client_builds_requests_and_parses_responses_of_the_ids_model(exports):
    assert (serving_client.PAD_ID, serving_client.UNK_ID, serving_client.BOS_ID,
            serving_client.EOS_ID) == (project_tokenizer.PAD_ID, project_tokenizer.UNK_ID,
                                       project_tokenizer.BOS_ID, project_tokenizer.EOS_ID)
    sp = serving_client.load_tokenizer(exports.ids_dir)
    for signature in ("serving_default", "greedy"):
        body = json.loads(json.dumps(serving_client.build_request(exports.sentences, sp,
                                                                  signature)))
        assert body["signature_name"] == signature
        # sentencepiece in the client tokenizes exactly as tf-text does in the project.
        assert body["inputs"]["source_ids"] == exports.source_ids.tolist()
        # The SavedModel called in-process stands in for TF Serving: its outputs as the
        # REST API returns them, in the columnar and the row form.
        out = exports.ids_model.signatures[signature](
            source_ids=tf.constant(body["inputs"]["source_ids"], tf.int32))
        ids, scores = out["ids"].numpy().tolist(), out["scores"].numpy().tolist()
        columnar = json.loads(json.dumps({"outputs": {"ids": ids, "scores": scores}}))
        rows = json.loads(json.dumps({"predictions": [
            {"ids": i, "scores": s} for i, s in zip(ids, scores)]}))
        assert serving_client.parse_response(columnar, sp) == exports.strings[signature]
        assert serving_client.parse_response(rows, sp) == exports.strings[signature]
    assert serving_client.build_request(["", ""], sp)["inputs"] == {"source_ids": [[0], [0]]}
    assert serving_client.detokenize([2, 1, 3, 7], sp) == ""
    assert serving_client.translate([], sp, url="http://127.0.0.1:9/unused") == []
