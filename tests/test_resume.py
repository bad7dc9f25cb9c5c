"""Step-exact resume: a run killed with SIGKILL and started again with the same command ends
with the weights, checkpoints and history of the same run never interrupted.

The runs are real `keras-transformer train` processes on a tiny config with dropout (so the
dropout seed states matter) and TensorFlow op determinism on (`TF_DETERMINISTIC_OPS=1`);
one of them accumulates 2 batches per update over 9-batch epochs, so its backups fall in the
middle of an update.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest
import yaml

from keras_transformer.training.averaging import list_checkpoints
from keras_transformer.training.backup import backups
from keras_transformer.training.config import RunError, load_config
from keras_transformer.training.train import _check_same_config
from tests.conftest import TINY_CONFIG

EPOCHS = 3


def _config(path, **training):
    config = yaml.safe_load(open(TINY_CONFIG))
    config["model"].update(dropout=0.1, attention_dropout=0.1, activation_dropout=0.1)
    config["data"]["train_limit"] = 800
    config["training"].update({"epochs": EPOCHS, "checkpoint_every": 7, "average_last": 3,
                               **training})
    path.write_text(yaml.safe_dump(config))
    return path


def _command(config, run_dir, *extra):
    return [sys.executable, "-m", "keras_transformer.cli", "train", "--config", str(config),
            "--out", str(run_dir), "--verbose", "0", "--no-evaluate", "--no-export", *extra]


_ENV = {**os.environ, "TF_DETERMINISTIC_OPS": "1"}


def _run(command):
    result = subprocess.run(command, env=_ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


# Every test compares with the same config's run never interrupted (one run per config).
ACCUMULATING = {"accumulate_batches": 2, "steps_per_epoch": 9}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    runs = {}

    def run(**training):
        key = tuple(sorted(training.items()))
        if key not in runs:
            home = tmp_path_factory.mktemp("uninterrupted")
            config = _config(home / "config.yaml", **training)
            _run(_command(config, home / "run"))
            runs[key] = config, home / "run"
        return runs[key]

    return run


def _kill_after_backups(command, run_dir, count):
    """Start `command`, SIGKILL it once `count` epoch-end backups exist (mid-epoch)."""
    process = subprocess.Popen(command, env=_ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        done = [json.load(open(os.path.join(path, "state.json")))["epochs_done"]
                for path in backups(str(run_dir / "backup"))]
        if done and max(done) >= count:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    time.sleep(1.0)  # into the next epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "model.keras").exists()


def _weights(path):
    """Every array of a Keras weights file (.keras or .weights.h5), by its place."""
    if str(path).endswith(".keras"):
        return keras.saving.load_model(path).get_weights()
    arrays = []
    with h5py.File(path) as f:
        f.visititems(lambda name, item: arrays.append((name, item[()]))
                     if isinstance(item, h5py.Dataset) else None)
    return arrays


def _history(run_dir):
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


def _assert_same_run(run_dir, reference):
    for got, want in zip(_weights(run_dir / "model.keras"), _weights(reference / "model.keras")):
        np.testing.assert_array_equal(got, want)
    names = [os.path.basename(p) for p in list_checkpoints(str(run_dir / "checkpoints"))]
    assert names == [os.path.basename(p)
                     for p in list_checkpoints(str(reference / "checkpoints"))]
    for name in names:  # weights and optimizer state at every checkpointed step
        for (path, got), (_, want) in zip(_weights(run_dir / "checkpoints" / name),
                                          _weights(reference / "checkpoints" / name)):
            np.testing.assert_array_equal(got, want, err_msg=f"{name}: {path}")
    got, want = _history(run_dir), _history(reference)
    assert [row["epoch"] for row in got] == [str(e) for e in range(EPOCHS)]
    for a, b in zip(got, want):
        assert a["loss"] == b["loss"] and a["val_loss"] == b["val_loss"]
    summary = json.load(open(run_dir / "summary.json"))
    assert summary["steps"] == json.load(open(reference / "summary.json"))["steps"]
    assert not (run_dir / "backup").exists() and not list(run_dir.glob("**/.partial-*"))
    return summary


def test_killed_mid_epoch_resumes_exactly(uninterrupted, tmp_path):
    config, reference = uninterrupted()
    run_dir = tmp_path / "run"
    _kill_after_backups(_command(config, run_dir), run_dir, count=1)
    _run(_command(config, run_dir))
    summary = _assert_same_run(run_dir, reference)
    assert summary["resumed_after_steps"] > 0 and summary["epochs_this_run"] < EPOCHS


def test_a_kill_during_any_write_resumes_exactly(uninterrupted, tmp_path):
    """What a kill in the middle of each write leaves (writes go to `.partial-*` names and
    are renamed when complete; CSVLogger appends in place) — and a damaged newest backup,
    which falls back to the one before it. With gradient accumulation: the backups hold
    half-summed updates."""
    config, reference = uninterrupted(**ACCUMULATING)
    run_dir = tmp_path / "run"
    _kill_after_backups(_command(config, run_dir), run_dir, count=2)
    newest = backups(str(run_dir / "backup"))[-1]
    weights = os.path.join(newest, "weights.weights.h5")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    with open(run_dir / "history.csv", "a") as f:
        f.write("2,0.51")  # half a row
    (run_dir / ".partial-config.yaml").write_text("model:\n  pres")
    (run_dir / ".partial-summary.json").write_text('{"steps": ')
    (run_dir / "checkpoints" / ".partial-ckpt-e002-b000003.weights.h5").write_bytes(b"\x89HDF")
    os.makedirs(run_dir / "backup" / ".partial-batch-000000099")
    (run_dir / "backup" / ".partial-batch-000000099" / "state.json").write_text("{")
    (run_dir / ".partial-model.keras").write_bytes(b"PK\x03")
    _run(_command(config, run_dir))
    _assert_same_run(run_dir, reference)


def test_another_config_is_refused_unless_forced(uninterrupted, tmp_path):
    config, reference = uninterrupted()
    changed = _config(tmp_path / "changed.yaml", epochs=EPOCHS + 1)
    result = subprocess.run(_command(changed, reference), env=_ENV, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2
    err = result.stderr.strip()
    assert err.count("\n") == 0 and "training.epochs: 3 -> 4" in err and "--force" in err
    # --force lets the new config through (and train saves it as the run's).
    new = load_config(changed)
    _check_same_config(new, str(reference), force=True)
    with pytest.raises(RunError, match="another config"):
        _check_same_config(new, str(reference), force=False)
    # The same config again: the run is finished, nothing is trained or rewritten.
    before = os.path.getmtime(reference / "model.keras")
    result = _run(_command(config, reference))
    assert "trained already" in result.stdout
    assert os.path.getmtime(reference / "model.keras") == before


def test_one_train_at_a_time_on_a_run_directory(tmp_path):
    from keras_transformer.training.train import hold_lock

    first = hold_lock(str(tmp_path))
    with pytest.raises(RunError, match="used by another `train` process"):
        hold_lock(str(tmp_path))
    first.close()
    hold_lock(str(tmp_path)).close()  # free again once the holder is gone


def test_a_backup_of_an_earlier_version_is_refused_not_ignored(tmp_path):
    """A backup written by Keras' BackupAndRestore (earlier versions) cannot resume
    step-exactly; starting over silently would throw the run's training away."""
    import keras_transformer as kt
    from keras_transformer.training.backup import restore

    (tmp_path / "training_metadata.json").write_text('{"epoch": 3, "batch": 10}')
    (tmp_path / "latest.weights.h5").write_bytes(b"")
    model = kt.Transformer(kt.TransformerConfig.from_preset("tiny", vocab_size=40))
    with pytest.raises(RunError, match="earlier version"):
        restore(model, str(tmp_path))
    assert restore(model, str(tmp_path / "none")) is None  # no backup at all: a fresh run
