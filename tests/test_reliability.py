"""Issue 18, reliability: no untrained weights behind the user's back, every bad config value
is a one-line error naming its key before anything is written, and an exported model never
reports a beam it did not decode with.

The runs here are built by hand (config.yaml + tokenizer.model + one checkpoint, no
model.keras): a run killed before it finished, without spending time on training.
"""

import json
import os
import shutil

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_transformer import cli
from keras_transformer.training.config import (
    ConfigError, RunError, load_config, parse_config, save_config)

SOURCES = ["a man rides a horse .", "two dogs play in the snow .", "a girl reads a book .",
           "the boy runs to the red car .", "people walk on the street ."]
TARGETS = ["ein mann reitet ein pferd .", "zwei hunde spielen im schnee .",
           "ein mädchen liest ein buch .", "der junge läuft zum roten auto .",
           "leute gehen auf der straße ."]
CHECKPOINT = "ckpt-e001-b000010.weights.h5"


def _write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def _run_values(data_dir, beam_size=2):
    return {
        "model": {"preset": "tiny", "d_model": 16, "d_ff": 32, "num_encoder_layers": 1,
                  "num_decoder_layers": 1},
        "data": {"source": "text", "max_length": 32,
                 "test_source": os.path.join(data_dir, "test.en"),
                 "test_target": os.path.join(data_dir, "test.de")},
        "tokenizer": {"vocab_size": 60},
        "training": {"epochs": 1, "checkpoint_every": 10},
        "evaluation": {"beam_size": beam_size, "max_extra_length": 4, "batch_size": 8},
    }


def _files(directory):
    """Every path under `directory`, relative, to compare before and after a command."""
    return sorted(os.path.relpath(os.path.join(root, name), directory)
                  for root, dirs, names in os.walk(directory) for name in dirs + names)


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("keras-transformer: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A run killed after its first checkpoint: config.yaml, tokenizer.model and
    checkpoints/ckpt-e001-b000010.weights.h5, but no model.keras."""
    from keras_transformer.tokenizer import SubwordTokenizer
    from keras_transformer.training.evaluate import build_run_model

    run_dir = str(tmp_path_factory.mktemp("interrupted_run"))
    _write_lines(os.path.join(run_dir, "test.en"), SOURCES)
    _write_lines(os.path.join(run_dir, "test.de"), TARGETS)
    config = parse_config(_run_values(run_dir), where="config.yaml")
    save_config(config, os.path.join(run_dir, "config.yaml"))
    tokenizer = SubwordTokenizer.train((SOURCES + TARGETS) * 20, vocab_size=60)
    tokenizer.save(os.path.join(run_dir, "tokenizer.model"))
    os.makedirs(os.path.join(run_dir, "checkpoints"))
    build_run_model(config, tokenizer).save_weights(
        os.path.join(run_dir, "checkpoints", CHECKPOINT))
    return run_dir


def _copy_run(run_dir, tmp_path, checkpoints=True):
    """A copy of the run's config, vocabulary and data (and checkpoints) to change freely."""
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("config.yaml", "tokenizer.model", "test.en", "test.de"):
        shutil.copy(os.path.join(run_dir, name), copy / name)
    if checkpoints:
        shutil.copytree(os.path.join(run_dir, "checkpoints"), copy / "checkpoints")
    else:
        (copy / "checkpoints").mkdir()
    return str(copy)


# 1. No untrained weights behind the user's back ---------------------------------------------


@pytest.mark.parametrize("fmt,out", [("saved_model", "saved_model"),
                                     ("tflite", "model.tflite")])
def test_export_refuses_a_run_without_model_keras(interrupted_run, tmp_path, capsys, fmt, out):
    before = _files(interrupted_run)
    out = str(tmp_path / out)
    assert cli.main(["export", "--run", interrupted_run, "--format", fmt, "--out", out]) == 2
    err = _one_line_error(capsys)
    assert "no model.keras" in err and "average-checkpoints" in err and "--checkpoint" in err
    assert "keras-transformer train --config" in err
    assert not os.path.exists(out) and _files(interrupted_run) == before
    assert not os.listdir(tmp_path)


def test_evaluate_refuses_a_run_without_model_keras(interrupted_run, capsys):
    before = _files(interrupted_run)
    assert cli.main(["evaluate", "--run", interrupted_run, "--limit", "2"]) == 2
    assert "no model.keras" in _one_line_error(capsys)
    assert _files(interrupted_run) == before  # no .hyp, no bleu json


def test_load_run_refuses_untrained_weights_unless_asked(interrupted_run):
    from keras_transformer.training.evaluate import load_run

    with pytest.raises(RunError, match="no model.keras"):
        load_run(interrupted_run)
    _, model, tokenizer = load_run(interrupted_run, allow_untrained=True)
    assert model.config.vocab_size == tokenizer.vocab_size


def test_evaluate_scores_an_explicit_checkpoint(interrupted_run, tmp_path, capsys):
    run = _copy_run(interrupted_run, tmp_path)
    assert cli.main(["evaluate", "--run", run, "--checkpoint", "latest", "--beam", "1",
                     "--limit", "2"]) == 0
    name = CHECKPOINT[: -len(".weights.h5")]
    with open(os.path.join(run, f"bleu.test.{name}.json")) as f:
        report = json.load(f)
    assert report["model"] == name and report["beam_size"] == 1 and report["sentences"] == 2
    with open(os.path.join(run, f"test.{name}.hyp"), encoding="utf-8") as f:
        assert len(f.read().splitlines()) == 2


@pytest.mark.parametrize("checkpoint", ["missing.weights.h5", "latest"])
def test_a_checkpoint_that_is_not_there_is_an_error(interrupted_run, tmp_path, capsys,
                                                    checkpoint):
    run = _copy_run(interrupted_run, tmp_path, checkpoints=False)  # "latest": none there
    before = _files(run)
    out = str(tmp_path / "saved_model")
    assert cli.main(["export", "--run", run, "--checkpoint", checkpoint, "--out", out]) == 2
    assert "--checkpoint" in _one_line_error(capsys)
    assert not os.path.exists(out) and _files(run) == before


def test_a_checkpoint_of_another_model_is_an_error(interrupted_run, tmp_path, capsys):
    from keras_transformer.model import Transformer

    run = _copy_run(interrupted_run, tmp_path)
    other = str(tmp_path / "other.weights.h5")
    config = load_config(os.path.join(run, "config.yaml")).model
    Transformer(config.replace(d_model=8, d_ff=16, vocab_size=30)).save_weights(other)
    before = _files(run)
    out = str(tmp_path / "saved_model")
    assert cli.main(["export", "--run", run, "--checkpoint", other, "--out", out]) == 2
    assert "does not fit the run's model" in _one_line_error(capsys)
    assert not os.path.exists(out) and _files(run) == before


def test_a_run_without_vocabulary_is_an_error(interrupted_run, tmp_path, capsys):
    run = _copy_run(interrupted_run, tmp_path)
    os.remove(os.path.join(run, "tokenizer.model"))
    assert cli.main(["evaluate", "--run", run, "--checkpoint", "latest"]) == 2
    assert "no tokenizer.model" in _one_line_error(capsys)


def test_average_checkpoints_works_on_an_interrupted_run(interrupted_run, tmp_path):
    import keras

    out = str(tmp_path / "averaged.keras")
    assert cli.main(["average-checkpoints", "--run", interrupted_run, "--out", out]) == 0
    averaged = keras.models.load_model(out)
    expected = keras.models.clone_model(averaged)
    expected.load_weights(os.path.join(interrupted_run, "checkpoints", CHECKPOINT))
    for a, b in zip(averaged.weights, expected.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_average_checkpoints_refuses_a_run_without_checkpoints(interrupted_run, tmp_path,
                                                               capsys):
    run = _copy_run(interrupted_run, tmp_path, checkpoints=False)
    before = _files(run)
    assert cli.main(["average-checkpoints", "--run", run]) == 2
    assert "checkpoints" in _one_line_error(capsys)
    assert _files(run) == before  # no model.keras of random weights


def test_a_vocabulary_that_does_not_fit_the_model_is_an_error(interrupted_run, tmp_path,
                                                              capsys):
    from keras_transformer.model import Transformer
    from keras_transformer.tokenizer import SubwordTokenizer
    from keras_transformer.training.evaluate import load_run

    run = _copy_run(interrupted_run, tmp_path)
    vocab = SubwordTokenizer.load(os.path.join(run, "tokenizer.model")).vocab_size
    config = load_config(os.path.join(run, "config.yaml"))
    Transformer(config.model.replace(vocab_size=vocab + 5)).save(os.path.join(run, "model.keras"))
    with pytest.raises(RunError, match=f"{vocab} subwords .* vocab_size is {vocab + 5}"):
        load_run(run)
    out = str(tmp_path / "saved_model")
    assert cli.main(["export", "--run", run, "--out", out]) == 2
    _one_line_error(capsys)
    assert not os.path.exists(out)


# 3. Every bad config value is a one-line error naming the key -------------------------------

BAD_VALUES = [
    ("training", "strategy", "mirored"),
    ("training", "resume", "fast"),
    ("training", "mixed_precision", "bfloat16"),
    ("training", "warmup_steps", 0),
    ("training", "decay", "linear"),
    ("training", "batch_tokens", 0),
    ("training", "epochs", 0),
    ("training", "epochs", "abc"),
    ("training", "epochs", 2.5),
    ("training", "checkpoint_every", 0),
    ("training", "average_last", -1),
    ("training", "jit_compile", "yes"),
    ("model", "dropout", -0.1),
    ("model", "attention_dropout", 1.0),
    ("model", "activation_dropout", 1.5),
    ("model", "label_smoothing", "0.1"),
    ("model", "d_model", "abc"),
    ("model", "num_heads", 0),
    ("model", "preset", "huge"),
    ("evaluation", "beam_size", 0),
    ("evaluation", "alpha", -0.5),
    ("evaluation", "stopping", "early"),
    ("tokenizer", "vocab_size", 4),
    ("tokenizer", "vocab_size", "abc"),
    ("data", "max_length", 0),
    ("data", "source", "wmt14"),
    ("training", "accumulate_batches", 0),
    ("training", "accumulate_batches", -2),
    ("training", "accumulate_batches", 2.5),
    ("training", "accumulate_batches", "4"),
    ("training", "weight_decay", -0.01),
    ("training", "weight_decay", "0.1"),
]


def _assert_names_key(values, section, key):
    with pytest.raises(ConfigError) as error:
        parse_config(values, where="config.yaml")
    message = str(error.value)
    assert message.startswith(f"config.yaml: {section}.{key} ") and "\n" not in message, message
    return message


@pytest.mark.parametrize("section,key,value", BAD_VALUES,
                         ids=[f"{s}.{k}={v!r}" for s, k, v in BAD_VALUES])
def test_a_bad_value_is_a_config_error_naming_its_key(section, key, value):
    message = _assert_names_key({section: {key: value}}, section, key)
    assert repr(value) in message or str(value) in message


def test_the_message_says_what_is_expected():
    assert str(_assert_names_key({"training": {"warmup_steps": 0}}, "training",
                                 "warmup_steps")) == (
        "config.yaml: training.warmup_steps must be >= 1, got 0")
    assert "pad, unk, bos, eos" in _assert_names_key({"tokenizer": {"vocab_size": 3}},
                                                     "tokenizer", "vocab_size")


def test_a_time_budget_cannot_bound_a_multi_worker_run():
    message = _assert_names_key({"training": {"strategy": "multi_worker",
                                              "time_budget_minutes": 30}},
                                "training", "time_budget_minutes")
    assert "max_steps" in message
    parse_config({"training": {"strategy": "multi_worker", "max_steps": 100}})


def test_schedule_to_budget_needs_a_cosine_and_a_budget():
    for training in ({"schedule_to_budget": True, "decay": "cosine"},
                     {"schedule_to_budget": True, "time_budget_minutes": 5}):
        message = _assert_names_key({"training": training}, "training", "schedule_to_budget")
        assert "cosine" in message and "time_budget_minutes" in message
    parse_config({"training": {"schedule_to_budget": True, "decay": "cosine",
                               "time_budget_minutes": 5}})


def test_gradient_accumulation_is_refused_with_multi_worker():
    message = _assert_names_key({"training": {"strategy": "multi_worker", "max_steps": 10,
                                              "accumulate_batches": 2}},
                                "training", "accumulate_batches")
    assert "multi_worker" in message
    parse_config({"training": {"strategy": "mirrored", "accumulate_batches": 2}})


def test_good_values_still_load():
    config = parse_config({"training": {"mixed_precision": "auto", "jit_compile": True,
                                        "average_last": 0, "devices": 2},
                           "model": {"preset": "tiny", "dropout": 0, "label_smoothing": 0.1},
                           "evaluation": {"alpha": 0, "beam_size": 1},
                           "tokenizer": {"vocab_size": 5}})
    assert config.training.mixed_precision == "auto" and config.model.vocab_size == 5
    for mode in ("none", "mixed_bfloat16", "mixed_float16"):
        parse_config({"training": {"mixed_precision": mode}})
    for strategy in ("default", "mirrored", "multi_worker", "tpu"):
        parse_config({"training": {"strategy": strategy}})


def test_a_run_written_by_an_earlier_version_still_loads(capsys):
    """Its config.yaml may hold a key that no longer does anything (training.backup_every):
    one line says so, and the run still resumes, scores and exports."""
    config = parse_config({"training": {"backup_every": 145, "epochs": 3}}, where="c.yaml")
    assert config.training.epochs == 3
    err = capsys.readouterr().err.strip()
    assert err == "c.yaml: training.backup_every is no longer used (backups are taken at " \
                  "every epoch end)"


def _not_numbers():
    return st.one_of(st.text(max_size=8), st.booleans(), st.lists(st.integers(), max_size=2))


# key -> (section, strategy of values that key must refuse)
_AT_LEAST_1 = st.one_of(st.integers(max_value=0), _not_numbers())
_FRACTION = st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0),
                      st.text(max_size=8), st.booleans())
BAD = {
    "strategy": ("training", st.text(max_size=12).filter(
        lambda s: s not in ("default", "mirrored", "multi_worker", "tpu"))),
    "mixed_precision": ("training", st.text(max_size=16).filter(
        lambda s: s not in ("none", "auto", "mixed_bfloat16", "mixed_float16"))),
    "warmup_steps": ("training", _AT_LEAST_1),
    "decay": ("training", st.text(max_size=16).filter(
        lambda s: s not in ("inverse_sqrt", "cosine"))),
    "batch_tokens": ("training", _AT_LEAST_1),
    "epochs": ("training", _AT_LEAST_1),
    "checkpoint_every": ("training", _AT_LEAST_1),
    "average_last": ("training", st.one_of(st.integers(max_value=-1), _not_numbers())),
    "dropout": ("model", _FRACTION),
    "attention_dropout": ("model", _FRACTION),
    "activation_dropout": ("model", _FRACTION),
    "label_smoothing": ("model", _FRACTION),
    "beam_size": ("evaluation", _AT_LEAST_1),
    "alpha": ("evaluation", st.one_of(st.floats(max_value=-1e-9), _not_numbers())),
    "vocab_size": ("tokenizer", st.one_of(st.integers(max_value=4), _not_numbers())),
    "max_length": ("data", _AT_LEAST_1),
    "accumulate_batches": ("training", _AT_LEAST_1),
    "weight_decay": ("training", st.one_of(st.floats(max_value=-1e-9), _not_numbers())),
}


@st.composite
def bad_settings(draw):
    key = draw(st.sampled_from(sorted(BAD)))
    section, values = BAD[key]
    return section, key, draw(values)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad_settings())
def test_property_any_bad_value_is_a_one_line_config_error_naming_the_key(case):
    section, key, value = case
    _assert_names_key({section: {key: value}}, section, key)


def test_train_with_a_bad_config_exits_2_and_writes_nothing(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    values = {"model": {"preset": "tiny"}, "training": {"epochs": 1, "warmup_steps": 0}}
    config.write_text(yaml.safe_dump(values))
    out = tmp_path / "out"
    assert cli.main(["train", "--config", str(config), "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "training.warmup_steps must be >= 1, got 0" in err
    assert not out.exists() or not os.listdir(out)


def test_a_yaml_syntax_error_is_one_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("training:\n  epochs: [1\n")
    assert cli.main(["train", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "not valid YAML" in _one_line_error(capsys)


# 4. An exported model decodes with the beam it reports --------------------------------------


def test_choose_beam():
    from keras_transformer.export.settings import BeamError, choose_beam

    assert choose_beam(None, 4, "m") == 4 and choose_beam(1, 4, "m") == 1
    assert choose_beam(4, 4, "m") == 4 and choose_beam(None, None, "m") is None
    with pytest.raises(BeamError, match="beam 4 it was exported with, not 3"):
        choose_beam(3, 4, "m")
    with pytest.raises(BeamError, match="does not record"):
        choose_beam(3, None, "m")


@pytest.fixture(scope="module")
def exported(interrupted_run, tmp_path_factory):
    """The interrupted run's checkpoint exported through the CLI (beam 2, from its config)."""
    out = str(tmp_path_factory.mktemp("exported") / "saved_model")
    assert cli.main(["export", "--run", interrupted_run, "--checkpoint", "latest",
                     "--out", out]) == 0
    return out


def test_export_of_a_checkpoint_records_its_beam(exported):
    import tensorflow as tf

    from keras_transformer.export.saved_model import exported_decoding

    assert exported_decoding(tf.saved_model.load(exported))["beam_size"] == 2


def test_evaluate_refuses_a_beam_the_exported_model_cannot_decode(interrupted_run, exported,
                                                                  tmp_path, capsys):
    run = _copy_run(interrupted_run, tmp_path)
    before = _files(run)
    assert cli.main(["evaluate", "--run", run, "--model", exported, "--beam", "3",
                     "--limit", "2"]) == 2
    err = _one_line_error(capsys)
    assert "--beam 3" in err and "beam 2 it was exported with" in err
    assert _files(run) == before


@pytest.mark.parametrize("beam,expected", [(None, 2), (1, 1), (2, 2)])
def test_evaluate_reports_the_beam_the_exported_model_used(interrupted_run, exported,
                                                           tmp_path, beam, expected):
    run = _copy_run(interrupted_run, tmp_path)
    # The run's config now asks for beam 4, which the exported model does not decode with.
    values = load_config(os.path.join(run, "config.yaml"))
    values.evaluation.beam_size = 4
    save_config(values, os.path.join(run, "config.yaml"))
    argv = ["evaluate", "--run", run, "--model", exported, "--limit", "2"]
    assert cli.main(argv + (["--beam", str(beam)] if beam else [])) == 0
    with open(os.path.join(run, "bleu.test.saved_model.json")) as f:
        assert json.load(f)["beam_size"] == expected


def test_tflite_metadata_records_the_beam(tmp_path, capsys, interrupted_run):
    import tensorflow as tf

    from keras_transformer.export import litert
    from keras_transformer.export.settings import (
        BeamError, add_tflite_metadata, tflite_decoding)

    class AddOne(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1], tf.float32, name="x")])
        def add(self, x):
            return {"y": x + 1.0}

    module = AddOne()
    flatbuffer = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.add.get_concrete_function()], module).convert()
    path = str(tmp_path / "model.tflite")
    with open(path, "wb") as f:
        f.write(add_tflite_metadata(flatbuffer, {"beam_size": 2, "alpha": 0.6}))
    assert tflite_decoding(path) == {"beam_size": 2, "alpha": 0.6}
    runner = litert.load_interpreter(path).get_signature_runner()  # still a valid model
    assert runner(x=np.array([1.0], np.float32))["y"][0] == 2.0
    with pytest.raises(BeamError):
        litert.litert_translator(path, 3)
    run = _copy_run(interrupted_run, tmp_path)
    before = _files(run)
    assert cli.main(["evaluate", "--run", run, "--model", path, "--beam", "3"]) == 2
    assert "--beam 3" in _one_line_error(capsys) and _files(run) == before
