"""`model.fit` under MirroredStrategy (2 logical CPUs) and MultiWorkerMirroredStrategy."""

import os
import socket
import subprocess
import sys

import numpy as np

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")


def _run(*args, **kwargs):
    return subprocess.Popen([sys.executable, WORKER, *map(str, args)], **kwargs)


def _updates(path):
    with np.load(path) as result:
        updates = [result[f"arr_{i}"] for i in range(len(result.files) - 2)]
        return int(result["replicas"]), float(result["loss"]), updates


def test_mirrored_step_equals_single_device_global_token_mean(tmp_path):
    for mode in ("single", "mirrored"):
        assert _run(mode, tmp_path / f"{mode}.npz").wait(timeout=300) == 0
    replicas, mirrored_loss, mirrored = _updates(tmp_path / "mirrored.npz")
    _, single_loss, single = _updates(tmp_path / "single.npz")
    assert replicas == 2
    # One SGD step: the gradient is that of the loss over all tokens / all tokens,
    # although one replica holds 16 real tokens and the other 4.
    assert abs(mirrored_loss - single_loss) < 1e-5
    assert max(np.abs(a).max() for a in single) > 1e-3  # the step did move the weights
    for a, b in zip(mirrored, single):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_fit_ends_with_identical_weights(tmp_path):
    port = _free_port()
    workers = [_run("multi_worker", tmp_path / f"w{i}.npz", i, port) for i in (0, 1)]
    assert [w.wait(timeout=300) for w in workers] == [0, 0]
    (n0, _, w0), (n1, _, w1) = _updates(tmp_path / "w0.npz"), _updates(tmp_path / "w1.npz")
    assert n0 == n1 == 2
    assert max(np.abs(a).max() for a in w0) > 1e-3
    for a, b in zip(w0, w1):
        np.testing.assert_array_equal(a, b)
