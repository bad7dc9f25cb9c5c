"""How fast this CPU multiplies the decoding step's matrices, by engine.

A beam-4 decoding step over 32 sentences multiplies 128 rows by each weight matrix of the
main-job model (d_model 128, d_ff 256, vocabulary 8,000); the output projection is the
largest. This times those products (float32) in three engines on the same threads:
TensorFlow under XLA (what the compiled decoder runs), TensorFlow without XLA (its
oneDNN/Eigen kernels) and NumPy (its BLAS, a Python loop), and reports GFLOP/s (median of 7
rounds of 200 products; loop overhead included, as in decoding) beside the CPU flags. XLA
runs again in fresh processes with the CPU backend options in `XLA_VARIANTS` (XNNPACK and
oneDNN dot kernels; an option this TensorFlow build lacks shows as an error row).

    python bench/gemm.py          # ~1 min; writes bench/results/gemm.json
"""

import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from keras_transformer.training.precision import cpu_flags  # noqa: E402

# (rows, inner, columns): the step's products at batch 32 x beam 4 and at batch 1 x beam 4.
SHAPES = [(128, 128, 8000), (128, 128, 384), (128, 128, 256), (128, 256, 128),
          (4, 128, 8000), (4, 128, 256)]
REPEAT, ROUNDS = 200, 7


def _loop(a, b):
    """REPEAT products in a `tf.while_loop`, as the decoding loop issues them; each one
    feeds a scalar into the next left operand, so none can be hoisted or merged."""
    def body(i, a, total):
        product = tf.matmul(a, b)
        corner = tf.reduce_max(product)  # reads all of it: no slice of the product
        return i + 1, a + corner * 1e-30, total + corner

    return tf.while_loop(lambda i, a, total: i < REPEAT, body,
                         (tf.constant(0), a, tf.zeros([])))[2]


def _time(call):
    call()  # trace, compile, warm the caches
    rounds = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        call()
        rounds.append((time.perf_counter() - started) / REPEAT)
    return statistics.median(rounds)


def measure(rows, inner, columns, engines):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, inner), dtype=np.float32)
    b = rng.standard_normal((inner, columns), dtype=np.float32)
    ta, tb = tf.constant(a), tf.constant(b)
    xla = tf.function(_loop, jit_compile=True)
    graph = tf.function(_loop, jit_compile=False)

    def numpy_loop():
        for _ in range(REPEAT):
            np.matmul(a, b)

    calls = {"tf_xla": lambda: xla(ta, tb).numpy(),
             "tf_graph": lambda: graph(ta, tb).numpy(), "numpy": numpy_loop}
    flops = 2.0 * rows * inner * columns
    row = {"shape": [rows, inner, columns]}
    for engine in engines:
        seconds = _time(calls[engine])
        row[f"{engine}_us"] = round(seconds * 1e6, 1)
        row[f"{engine}_gflops"] = round(flops / seconds / 1e9, 1)
    return row


# XLA's CPU backend options to compare (each in a fresh process: XLA reads XLA_FLAGS once).
XLA_VARIANTS = ["", "--xla_cpu_use_onednn=true", "--xla_cpu_prefer_vector_width=512",
                "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"]


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        engines = sys.argv[2].split(",")
        print(json.dumps([measure(*shape, engines) for shape in SHAPES]))
        return
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "fma", "amx")))
    results = {"cpu_flags": flags, "threads": os.cpu_count(),
               "tensorflow": tf.__version__, "numpy": np.__version__, "runs": []}
    for number, xla_flags in enumerate(XLA_VARIANTS):
        engines = "tf_xla,tf_graph,numpy" if number == 0 else "tf_xla"
        env = {**os.environ, "XLA_FLAGS": xla_flags, "TF_CPP_MIN_LOG_LEVEL": "2"}
        child = subprocess.run([sys.executable, __file__, "--child", engines], env=env,
                               capture_output=True, text=True)
        if child.returncode:
            rows = {"error": (child.stderr.strip().splitlines() or ["?"])[-1]}
        else:
            rows = json.loads(child.stdout.strip().splitlines()[-1])
        results["runs"].append({"xla_flags": xla_flags, "rows": rows})
        print(json.dumps(results["runs"][-1]), flush=True)
    path = os.path.join(HERE, "results", "gemm.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
