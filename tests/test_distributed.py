"""`model.fit` under MirroredStrategy (2 logical CPUs) and MultiWorkerMirroredStrategy."""

import os
import subprocess
import sys

import numpy as np
import pytest

from keras_transformer.training.strategy import local_tf_configs

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")


def _run(*args, **kwargs):
    return subprocess.Popen([sys.executable, WORKER, *map(str, args)], **kwargs)


def _updates(path):
    with np.load(path) as result:
        updates = [result[f"arr_{i}"] for i in range(len(result.files) - 2)]
        return int(result["replicas"]), float(result["loss"]), updates


@pytest.mark.parametrize("embeddings", ["tied", "untied"])
def test_mirrored_step_equals_single_device_global_token_mean(tmp_path, embeddings):
    for mode in ("single", "mirrored"):
        assert _run(mode, tmp_path / f"{mode}.npz", embeddings).wait(timeout=300) == 0
    replicas, mirrored_loss, mirrored = _updates(tmp_path / "mirrored.npz")
    _, single_loss, single = _updates(tmp_path / "single.npz")
    assert replicas == 2
    # One SGD step: the gradient is that of the loss over all tokens / all tokens,
    # although one replica holds 16 real tokens and the other 4.
    assert abs(mirrored_loss - single_loss) < 1e-5
    assert max(np.abs(a).max() for a in single) > 1e-3  # the step did move the weights
    for a, b in zip(mirrored, single):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_multi_worker_fit_ends_with_identical_weights(tmp_path):
    workers = [_run("multi_worker", tmp_path / f"w{i}.npz", env=dict(os.environ, TF_CONFIG=c))
               for i, c in enumerate(local_tf_configs(2))]
    assert [w.wait(timeout=300) for w in workers] == [0, 0]
    (n0, _, w0), (n1, _, w1) = _updates(tmp_path / "w0.npz"), _updates(tmp_path / "w1.npz")
    assert n0 == n1 == 2
    assert max(np.abs(a).max() for a in w0) > 1e-3
    for a, b in zip(w0, w1):
        np.testing.assert_array_equal(a, b)


def test_two_worker_train_writes_the_run_directory_once(tmp_path):
    """`keras-transformer train` in two worker processes (TF_CONFIG) on one run directory:
    the chief alone writes config, logs, history, checkpoints and the final models; the
    other worker trains in step with it and exits without scoring or exporting. Both are
    killed with SIGKILL in the middle of the run and started again: they resume together
    from the chief's backup."""
    import json
    import signal
    import time

    import yaml

    from keras_transformer.training.backup import backups

    config = yaml.safe_load(open(os.path.join(os.path.dirname(WORKER), "..", "training",
                                              "configs", "tiny.yaml"), encoding="utf-8"))
    config["data"]["train_limit"] = 600
    config["training"].update(strategy="multi_worker", epochs=4, checkpoint_every=4)
    path = tmp_path / "mw.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    run_dir = tmp_path / "run"
    cli = os.path.join(os.path.dirname(sys.executable), "keras-transformer")

    def start_workers():
        return [subprocess.Popen(
            [cli, "train", "--config", str(path), "--out", str(run_dir), "--verbose", "0",
             "--no-evaluate", "--no-export"],
            env=dict(os.environ, TF_CONFIG=tf_config), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True) for tf_config in local_tf_configs(2)]

    workers, deadline = start_workers(), time.time() + 300
    while not backups(str(run_dir / "backup")) and time.time() < deadline:
        time.sleep(0.05)
    assert all(w.poll() is None for w in workers), "the run ended before it was killed"
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
        worker.communicate()

    workers = start_workers()
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert "trained" in outputs[0] and "trained" not in outputs[1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_workers"] == 2 and summary["chief"]
    assert summary["resumed_after_steps"] > 0 and summary["epochs_this_run"] < 4
    assert summary["history"]["epoch"] == [0, 1, 2, 3]  # each epoch logged once
    assert len(list((run_dir / "logs" / "train").glob("events.*"))) == 2  # one a start
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints and len(checkpoints) == summary["steps"] // 4
    assert (run_dir / "translator.keras").exists() and (run_dir / "model.keras").exists()


def test_a_worker_stops_waiting_for_the_chiefs_vocabulary(tmp_path, monkeypatch):
    """A worker other than the chief polls the shared run directory for tokenizer.model
    (every 5 s): it loads the file once the chief has written it, and gives up after
    `wait_seconds` with a one-line RunError naming the path. The sleeps are recorded,
    not slept, so the test takes no wall time."""
    import importlib
    import time

    from keras_transformer.tokenizer import SubwordTokenizer
    from keras_transformer.training.config import RunError, parse_config

    train_module = importlib.import_module("keras_transformer.training.train")
    config, path = parse_config({}), tmp_path / "tokenizer.model"
    slept = []
    monkeypatch.setattr(train_module.time, "sleep", slept.append)

    started = time.monotonic()
    for wait_seconds in (0, 1, 12):
        slept.clear()
        with pytest.raises(RunError) as error:
            train_module.load_or_train_tokenizer(config, str(tmp_path), is_chief=False,
                                                 wait_seconds=wait_seconds)
        message = str(error.value)
        assert str(path) in message and "\n" not in message, message
        # It waited (in polls) at least wait_seconds, and gave up at the next poll.
        assert wait_seconds <= sum(slept) < wait_seconds + 10, slept
    assert not path.exists()  # a worker never writes the vocabulary

    # The chief's file appears during the wait: the worker loads it at the next poll.
    chief = SubwordTokenizer.train(["a b c d e f g h", "i j k l m n o p"] * 50, vocab_size=40)

    def chief_writes_on_second_poll(seconds):
        slept.append(seconds)
        if len(slept) == 2:
            chief.save(str(path))

    slept.clear()
    monkeypatch.setattr(train_module.time, "sleep", chief_writes_on_second_poll)
    worker = train_module.load_or_train_tokenizer(config, str(tmp_path), is_chief=False,
                                                  wait_seconds=60)
    assert len(slept) == 2 and worker.model_proto == chief.model_proto
    assert time.monotonic() - started < 30  # no real waiting (tokenizer training aside)
