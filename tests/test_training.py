"""The training CLI end to end: run directory, BLEU, averaging (resume: test_resume.py)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import yaml

from keras_transformer import cli
from keras_transformer.training.averaging import average_checkpoints, list_checkpoints
from tests.conftest import TINY_CONFIG


def test_run_directory_has_everything(tiny_run):
    for name in ("config.yaml", "tokenizer.model", "model.keras", "summary.json",
                 "history.csv", "logs", "saved_model/saved_model.pb", "model.int8.tflite",
                 "model.int8.step.tflite"):
        assert os.path.exists(os.path.join(tiny_run, name)), name
    summary = json.load(open(os.path.join(tiny_run, "summary.json")))
    assert summary["steps"] > 0 and summary["epochs_this_run"] == 2
    assert not os.path.exists(os.path.join(tiny_run, "backup"))  # removed once finished
    losses = summary["history"]["loss"]
    assert losses[-1] < losses[0]  # it learns
    assert len(list_checkpoints(os.path.join(tiny_run, "checkpoints"))) >= 4


def test_evaluate_prints_sacrebleu_signature(tiny_run, capsys):
    assert cli.main(["evaluate", "--run", tiny_run, "--limit", "16", "--beam", "2"]) == 0
    out = capsys.readouterr().out
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in out
    report = json.load(open(os.path.join(tiny_run, "bleu.test.json")))
    assert report["sentences"] == 16 and 0.0 <= report["bleu"] <= 100.0
    assert len(open(os.path.join(tiny_run, "test.hyp"), encoding="utf-8").readlines()) == 16


def test_checkpoint_average_is_the_mean(tiny_run):
    paths = list_checkpoints(os.path.join(tiny_run, "checkpoints"))[-3:]
    model = keras.models.load_model(os.path.join(tiny_run, "model.keras"))
    singles = []
    for path in paths:
        model.load_weights(path)
        singles.append([w.copy() for w in model.get_weights()])
    average_checkpoints(model, paths)
    for i, averaged in enumerate(model.get_weights()):
        np.testing.assert_allclose(averaged, np.mean([s[i] for s in singles], axis=0), atol=1e-6)


def test_bad_config_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  sourse: text\n")
    assert cli.main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'sourse'" in err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_missing_text_file_is_named(tmp_path, capsys):
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump({"model": {"preset": "tiny"}, "data": {
        "source": "text", "train_source": str(tmp_path / "nope.en"),
        "train_target": str(tmp_path / "nope.de")}}))
    assert cli.main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "nope.en: no such file" in capsys.readouterr().err


def test_plot_writes_learning_curve_png(tiny_run, tmp_path):
    out = tmp_path / "curve.png"
    assert cli.main(["plot", "--run", tiny_run, "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_cli_average_checkpoints_writes_the_averaged_model(tiny_run, tmp_path):
    out = str(tmp_path / "averaged.keras")
    assert cli.main(["average-checkpoints", "--run", tiny_run, "--last", "2",
                     "--out", out]) == 0
    averaged = keras.models.load_model(out)
    paths = list_checkpoints(os.path.join(tiny_run, "checkpoints"))[-2:]
    reference = keras.models.load_model(os.path.join(tiny_run, "model.keras"))
    average_checkpoints(reference, paths)
    for got, want in zip(averaged.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_main_job_console_is_quiet_and_reports_the_plan(tmp_path):
    """The train command in a real process: the plan first, no TensorFlow start-up noise,
    no per-epoch Keras warnings; summary.json times every phase; BLEU, lowercased BLEU
    and chrF in the report; the learning curve drawn."""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "keras_transformer.cli", "train", "--config", TINY_CONFIG,
         "--out", str(run_dir), "--verbose", "2", "--no-export"],
        capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert result.returncode == 0, result.stderr[-2000:]
    console = result.stdout + result.stderr
    assert result.stdout.startswith("plan: 2 epochs x "), result.stdout[:300]
    for noise in ("ran out of data", "shuffle", "cuda", "absl::InitializeLog",
                  "cpu_feature_guard", "Warning"):
        assert noise.lower() not in console.lower(), noise
    summary = json.load(open(run_dir / "summary.json"))
    assert summary["wall_seconds"] >= summary["train_seconds"] + summary["evaluate_seconds"] - 1
    assert summary["steps"] == 2 * summary["steps_per_epoch"]
    # BLEU ran in a fresh process image (keras_transformer/train_command.py): it started
    # from the interpreter and TensorFlow, below training's peak; in the training process
    # it would start at or above that peak. The job's peak is its largest phase's (not
    # getrusage's, which a process forked from this test runner inherits).
    memory, start = summary["peak_memory_mb"], summary["phase_start_memory_mb"]
    assert 0 < start["evaluate"] < memory["train"], (start, memory)
    assert memory["job"] == max(v for k, v in memory.items() if k != "job"), memory
    report = json.load(open(run_dir / "bleu.test.json"))
    assert {"bleu", "bleu_lowercase", "chrf"} <= set(report)
    assert report["bleu_lowercase"] >= report["bleu"]
    assert (run_dir / "learning_curve.png").stat().st_size > 10_000


def test_time_budget_stops_mid_epoch_when_used_up(tmp_path):
    """Waiting for the end of an epoch overran (or, judged ahead, wasted) the budget: the
    run stops at the first step past it, validates, and still saves a model."""
    from keras_transformer.training.config import parse_config
    from keras_transformer.training.train import train

    values = yaml.safe_load(open(TINY_CONFIG))
    values["training"].update(epochs=5, time_budget_minutes=0.001)
    _, _, summary = train(parse_config(values), str(tmp_path / "run"), verbose=0)
    assert summary["stopped_by_time_budget"] and summary["epochs_this_run"] == 1
    assert summary["steps"] == 1 < summary["steps_per_epoch"]
    assert "val_loss" in summary["history"]
    assert os.path.exists(tmp_path / "run" / "model.keras")


def test_schedule_to_budget_ends_the_cosine_with_the_budget(tmp_path):
    """With `schedule_to_budget` the cosine no longer ends after `epochs` (far beyond the
    budget here) but where the budget does: the run stops with its learning rate near
    zero, not at the peak where a fixed end leaves a budget-stopped run."""
    from keras_transformer.schedules import cosine_schedule
    from keras_transformer.training.config import parse_config
    from keras_transformer.training.train import train

    values = yaml.safe_load(open(TINY_CONFIG))
    values["data"]["train_limit"] = 600  # epochs of ~10 steps: several fit the budget
    values["training"].update(epochs=1000, warmup_steps=10, decay="cosine",
                              time_budget_minutes=0.75, schedule_to_budget=True,
                              average_last=0)
    model, _, summary = train(parse_config(values), str(tmp_path / "run"), verbose=0)
    planned = 1000 * summary["steps_per_epoch"]
    ends = summary["schedule_ends"]
    assert ends and max(ends) < planned and summary["steps"] < planned
    schedule = cosine_schedule(model.optimizer)
    peak = schedule.peak
    # The run ends at the planned end (rate 0) or, if the budget cut the last epoch short,
    # within it: either way far down the cosine.
    assert summary["steps"] >= ends[-1] or summary["stopped_by_time_budget"]
    assert float(schedule(summary["steps"] - 1)) < 0.25 * peak
    saved = keras.saving.load_model(str(tmp_path / "run" / "model.keras"))
    assert cosine_schedule(saved.optimizer).get_config()["total_steps"] == ends[-1]


def test_epoch_estimate_leaves_out_one_off_compilations():
    """The first epoch traces and compiles each length bucket once (seconds against a
    fraction of a second a step): the budget must judge the next epoch without them,
    or a short budget stops after one epoch (the quick demo did: 1.77 BLEU)."""
    from keras_transformer.training.progress import steady_seconds

    first_epoch = [8.0] + [0.4] * 50 + [6.5] + [0.5] * 40 + [7.0] + [0.45] * 30
    steady = steady_seconds(first_epoch)
    assert abs(steady - (sum(first_epoch) - 21.5 + 3 * 0.45)) < 1e-6
    assert steady_seconds([0.4, 0.5, 0.6]) == 1.5  # a steady epoch stays as it is
    assert steady_seconds([]) == 0.0


def test_step_based_run_skips_the_counting_pass_and_stops_at_max_steps(tmp_path):
    """For corpora where one pass takes hours: epochs of `steps_per_epoch` steps (no
    counting pass) and `max_steps` in all, stopping mid-epoch."""
    from keras_transformer.training.config import parse_config
    from keras_transformer.training.train import train

    values = yaml.safe_load(open(TINY_CONFIG))
    values["training"].update(epochs=50, steps_per_epoch=3, max_steps=7)
    _, _, summary = train(parse_config(values), str(tmp_path / "run"), verbose=0)
    assert summary["steps"] == summary["steps_this_run"] == 7
    assert summary["steps_per_epoch"] == 3 and summary["epochs_this_run"] == 3
    assert summary["target_tokens_per_epoch"] is None


def test_cosine_run_ends_at_zero_and_averages_its_final_weights(tmp_path, monkeypatch):
    """`training.decay: cosine` reaches a learning rate of zero on the run's last update;
    a run that stops between checkpoints averages its final weights with the last ones,
    and the saved optimizer keeps its own step (a checkpoint's would rewind it)."""
    import importlib

    from keras_transformer.training.config import RunError, parse_config
    from keras_transformer.training.train import train

    # The module, not the `train` function the package also exports under that name.
    train_module = importlib.import_module("keras_transformer.training.train")

    # Keep the average whatever it validates, so the test sees which states were averaged.
    monkeypatch.setattr(train_module, "_no_worse", lambda *args: True)
    values = yaml.safe_load(open(TINY_CONFIG))
    values["training"].update(epochs=50, steps_per_epoch=3, max_steps=7, warmup_steps=2,
                              decay="cosine", checkpoint_every=3, average_last=3)
    _, _, summary = train(parse_config(values), str(tmp_path / "run"), verbose=0)
    assert summary["steps"] == 7
    # Checkpoints at steps 3 and 6, and the final weights at step 7.
    assert summary["averaged_checkpoints"] == [
        "ckpt-e001-b000003.weights.h5", "ckpt-e002-b000003.weights.h5", "final"]
    model = keras.models.load_model(str(tmp_path / "run" / "model.keras"))
    assert int(model.optimizer.iterations.numpy()) == 7
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)
    # All of it warm-up: refused in one line, leaving nothing that would make the
    # corrected command meet "another config".
    values["training"].update(max_steps=2)
    with pytest.raises(RunError, match=r"end before training.warmup_steps \(2\) is over"):
        train(parse_config(values), str(tmp_path / "short"), verbose=0)
    assert not os.path.exists(tmp_path / "short" / "config.yaml")
    values["training"].update(max_steps=7)
    assert train(parse_config(values), str(tmp_path / "short"), verbose=0)[2]["steps"] == 7


def test_average_with_the_current_weights_is_the_mean_and_keeps_the_optimizer(tiny_run):
    paths = list_checkpoints(os.path.join(tiny_run, "checkpoints"))[-2:]
    model = keras.models.load_model(os.path.join(tiny_run, "model.keras"))
    states = [[w.copy() for w in model.get_weights()]]
    for path in paths:
        model.load_weights(path)
        states.append([w.copy() for w in model.get_weights()])
    model.set_weights(states[0])
    # Optimizer values no checkpoint holds, to see that averaging leaves them alone.
    optimizer_state = [np.full(v.shape, 7, v.dtype) for v in model.optimizer.variables]
    for variable, value in zip(model.optimizer.variables, optimizer_state):
        variable.assign(value)
    average_checkpoints(model, paths, include_current=True)
    for i, averaged in enumerate(model.get_weights()):
        np.testing.assert_allclose(averaged, np.mean([s[i] for s in states], axis=0), atol=1e-6)
    for variable, value in zip(model.optimizer.variables, optimizer_state):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_decoding_sweep_max_extra_length_bounds_each_translation(tiny_run, tmp_path):
    import shutil

    import sentencepiece as spm
    import tensorflow as tf

    from keras_transformer.tokenizer import EOS_ID
    from keras_transformer.training import corpus, decoding_sweep
    from keras_transformer.training.evaluate import load_run

    # A copy of the run whose newest checkpoint never ends a sentence by itself (eos's
    # tied embedding row zeroed: its logit stays 0), so every translation runs to its limit.
    run = str(tmp_path / "run")
    shutil.copytree(tiny_run, run)
    config, model, _ = load_run(run, checkpoint="latest")
    table = model.source_embedding.embeddings
    table.assign(tf.tensor_scatter_nd_update(table, [[EOS_ID]], tf.zeros([1, table.shape[1]])))
    model.save_weights(os.path.join(run, "checkpoints", "ckpt-e999-b000000.weights.h5"))

    rows = list(decoding_sweep.sweep(run, [1], [2], [0.6], limit=16, extra_lengths=[0, 3]))
    assert [r["max_extra_length"] for r in rows] == [0, 3]
    pieces = spm.SentencePieceProcessor(model_file=os.path.join(run, "tokenizer.model"))
    sources, _ = corpus.split_lines(config.data, "valid")
    for row, extra in zip(rows, (0, 3)):
        # A translation, eos included, has at most its source's pieces + extra; a word
        # starts with a piece, so it has fewer words than that.
        lengths = [(len(h.split()), len(pieces.encode(s)) + extra)
                   for h, s in zip(row["hypotheses"], sources[:16])]
        assert all(words < limit for words, limit in lengths), (extra, lengths)
    assert sum(map(len, rows[1]["hypotheses"])) > sum(map(len, rows[0]["hypotheses"]))


def test_decoding_sweep_scores_validation_like_evaluate(tiny_run, tmp_path, capsys):
    from keras_transformer.training import decoding_sweep

    rows = list(decoding_sweep.sweep(tiny_run, [1, 2], [1, 2], [0.6], limit=24))
    assert [(r["average"], r["beam"]) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(r["split"] == "valid" and len(r["hypotheses"]) == 24 for r in rows)
    # K=1 is the last checkpoint alone: the same translations as `evaluate --checkpoint`.
    last = list_checkpoints(os.path.join(tiny_run, "checkpoints"))[-1]
    assert cli.main(["evaluate", "--run", tiny_run, "--split", "valid", "--limit", "24",
                     "--beam", "2", "--checkpoint", last]) == 0
    name = os.path.basename(last)[: -len(".weights.h5")]
    with open(os.path.join(tiny_run, f"valid.{name}.hyp"), encoding="utf-8") as f:
        assert rows[1]["hypotheses"] == f.read().splitlines()
    assert rows[2]["checkpoints"] == [os.path.basename(p) for p in
                                      list_checkpoints(os.path.join(tiny_run, "checkpoints"))[-2:]]

    out = str(tmp_path / "decoding")
    assert decoding_sweep.main(["--run", tiny_run, "--average", "2", "--limit", "8",
                                "--stopping", "exact", "first", "--out", out]) == 0
    with open(out + ".results.md", encoding="utf-8") as f:
        table = f.read()
    assert "| 2 | 4 | 0.6 | exact |" in table and "| 2 | 4 | 0.6 | first |" in table
    assert "--average 2 --limit 8" in table
    assert decoding_sweep.main(["--run", tiny_run, "--average", "1", "--beam", "2", "--limit", "8",
                                "--max-extra-length", "0", "50", "--weights", "int8",
                                "--out", out]) == 0
    with open(out + ".results.md", encoding="utf-8") as f:
        table = f.read()
    assert "| 1 | 2 | 0.6 | exact | 0 | int8 |" in table
    assert "| 1 | 2 | 0.6 | exact | 50 | int8 |" in table
    assert decoding_sweep.main(["--run", tiny_run, "--average", "999", "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--average 999" in err
